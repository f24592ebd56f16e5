"""``hub start``: run the hub (auth + proxy) on one TLS port."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from hub.audit_quota import DEFAULT_BURST, DEFAULT_RATE, QuotaConfig
from hub.extras import require_hub_extra
from hub.listener import ListenerLimits
from remoteler.addr import format_hostport, parse_hostport
from remoteler.clihelp import finish
from remoteler.errors import RemotelerError, UsageError

if TYPE_CHECKING:
    from hub.hashgate import HashGate
    from hub.joinguard import JoinGuard

log = logging.getLogger("remoteler.hub")
DEFAULT_LISTEN = "127.0.0.1:3080"
SSL_READ_BUFFER = 32 * 1024


EXAMPLES = {"start": "hub start --data-dir /var/lib/remoteler-hub --listen 0.0.0.0:3080"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hub", description="Remoteler hub: auth and proxy")
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="start the hub")
    start.add_argument("--data-dir", default="/var/lib/remoteler-hub", help="state directory")
    start.add_argument("--listen", default=DEFAULT_LISTEN, help="HOST:PORT (port 0 picks one)")
    start.add_argument(
        "--cluster-name",
        default="remoteler",
        help="name used on first start: a DNS name, the suffix of NODE.<cluster> "
        "(default: remoteler)",
    )
    start.add_argument(
        "--ca-passphrase-file",
        metavar="FILE",
        help="encrypt the CA keys at rest with the passphrase in FILE (0600); "
        "env REMOTELER_CA_PASSPHRASE_FILE or REMOTELER_CA_PASSPHRASE (default: none, "
        "keys unencrypted)",
    )
    start.add_argument(
        "--public-addr", action="append", default=[], help="extra name in the TLS certificate"
    )
    start.add_argument(
        "--shutdown-grace",
        type=float,
        default=30.0,
        help="seconds open sessions get to finish on SIGTERM (default 30)",
    )
    start.add_argument(
        "--max-agent-handshakes",
        type=int,
        default=ListenerLimits.tunnel_handshakes,
        help="most agent TLS handshakes in progress at once, fewer while the hub's event "
        "loop lags; more wait in a queue so users stay served during reconnect storms "
        "(default %(default)s)",
    )
    start.add_argument(
        "--max-agent-handshakes-per-addr",
        type=int,
        default=ListenerLimits.tunnel_handshakes_per_addr,
        help="most agent TLS handshakes one source address (IPv6: /64) has in progress; "
        "its others wait their turn, addresses take turns (default %(default)s)",
    )
    start.add_argument(
        "--max-user-handshakes-per-addr",
        type=int,
        default=ListenerLimits.user_handshakes_per_addr,
        help="most user (tsh, tctl) TLS handshakes one source address has in progress "
        "(default %(default)s)",
    )
    start.add_argument(
        "--max-pending-per-addr",
        type=int,
        default=ListenerLimits.max_pending_per_addr,
        help="most connections from one source address not yet through TLS; more are "
        "closed at once and agents retry with backoff (default %(default)s)",
    )
    start.add_argument(
        "--tls-reply-timeout",
        type=float,
        default=ListenerLimits.tls_reply_timeout,
        help="seconds a client has to answer the hub's TLS flight before its handshake "
        "is given up (docs/tunnels.md) (default %(default)s)",
    )
    start.add_argument(
        "--gc-interval",
        type=float,
        default=600.0,
        help="seconds between full garbage collections, at least 60; in between, objects "
        "that survived one are not walked again; 0 leaves Python's collector as it is "
        "(docs/tunnels.md) (default %(default)s)",
    )
    start.add_argument(
        "--drain-spread",
        type=float,
        default=None,
        help="agents are told to reconnect at random within this many seconds "
        "after a SIGTERM (default: 1 s per 200 agents, 5-120 s)",
    )
    start.add_argument(
        "--accept-empty-audit",
        action="store_true",
        help="start although audit.db is missing or empty while hub.db lists nodes, "
        "beginning a new audit trail (default: off, such a start is refused; docs/tctl.md)",
    )
    add_auth_limit_flags(start)
    start.add_argument(
        "--node-audit-rate",
        type=float,
        default=DEFAULT_RATE,
        metavar="EVENTS_PER_MIN",
        help=f"audit events each node may have stored per minute, sustained "
        f"(default {DEFAULT_RATE:g}; 0: no quota); the excess waits in the node's outbox; "
        "an event over 128 KiB counts once per started 128 KiB",
    )
    start.add_argument(
        "--node-audit-burst",
        type=int,
        default=DEFAULT_BURST,
        metavar="EVENTS",
        help=f"audit events a node may send at once, e.g. a backlog after an outage "
        f"(default {DEFAULT_BURST})",
    )
    start.add_argument("--log-level", default="INFO")
    return finish(parser, "hub", EXAMPLES)


def add_auth_limit_flags(start: argparse.ArgumentParser) -> None:
    """Password-hash and join limits (hub/hashgate.py, hub/joinguard.py; docs/security.md)."""
    from hub.hashgate import HashGatePolicy
    from hub.joinguard import JoinPolicy

    start.add_argument(
        "--max-password-hashes",
        type=int,
        default=HashGatePolicy.max_hashes,
        help="password hashes (logins, invites) running at once, hub-wide (default %(default)s)",
    )
    start.add_argument(
        "--password-hash-wait",
        type=float,
        default=HashGatePolicy.max_wait,
        help="seconds a login waits for a hash slot before 'the hub is busy' (default %(default)s)",
    )
    start.add_argument(
        "--join-failures-per-address",
        type=int,
        default=JoinPolicy.address_failures,
        help="failed joins one address (IPv6: /64) may make per 10 min (default %(default)s)",
    )
    start.add_argument(
        "--join-failures",
        type=int,
        default=JoinPolicy.global_failures,
        help="failed joins from all addresses per 10 min (default %(default)s)",
    )
    start.add_argument(
        "--join-attempts-per-address",
        type=int,
        default=JoinPolicy.address_attempts,
        help="join attempts, failed or not, one address (IPv6: /64) may make per minute "
        "(default %(default)s)",
    )


def auth_limits(args: argparse.Namespace) -> tuple[HashGate, JoinGuard]:
    """The password-hash cap (and an Argon2 pool as wide) and the join limits."""
    from hub import secrets as hs
    from hub.hashgate import HashGate, HashGatePolicy
    from hub.joinguard import JoinGuard, JoinPolicy

    max_hashes = max(1, args.max_password_hashes)
    hs.set_hash_threads(max_hashes)
    gate = HashGate(
        HashGatePolicy(max_hashes=max_hashes, max_wait=max(0.0, args.password_hash_wait))
    )
    guard = JoinGuard(
        JoinPolicy(
            address_failures=max(1, args.join_failures_per_address),
            global_failures=max(1, args.join_failures),
            address_attempts=max(1, args.join_attempts_per_address),
        )
    )
    return gate, guard


async def run(args: argparse.Namespace) -> None:
    import asyncio.sslproto
    import resource

    from hub.alive import alive_path, hold, keep_alive
    from hub.alive import stop as stop_alive
    from hub.audit_store import AuditStore, audit_db_path
    from hub.auth import AuthService
    from hub.backend import SQLiteBackend
    from hub.datadir import DataDir
    from hub.gcpolicy import MIN_INTERVAL, GcPolicy
    from hub.rotation_runtime import HubRotation
    from hub.seedcrypt import SeedCipher
    from hub.server import HubServer
    from hub.sslbuffer import share_ssl_read_buffer

    # asyncio gives every TLS connection its own 256 KiB read buffer: 2.5 GiB for
    # 10,000 idle agents. All connections share one (hub/sslbuffer.py); if this
    # Python's asyncio is not as expected, fall back to small per-connection ones.
    if not share_ssl_read_buffer():
        asyncio.sslproto.SSLProtocol.max_size = SSL_READ_BUFFER

    try:
        quota = QuotaConfig(args.node_audit_rate, args.node_audit_burst)
    except ValueError as exc:
        raise UsageError(f"{exc}: fix --node-audit-rate / --node-audit-burst") from None
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # one descriptor per agent
    host, port = parse_hostport(args.listen)
    from hub.secrets import read_passphrase

    data = DataDir(Path(args.data_dir), passphrase=read_passphrase(args.ca_passphrase_file))
    from hub.dbcheck import check_data_dir

    check_data_dir(data.path, accept_empty_audit=args.accept_empty_audit)  # docs/tctl.md
    passphrase = data.ca_passphrase()
    seeds = SeedCipher(passphrase) if passphrase is not None else None
    if seeds is not None and data.db_path.exists():  # before init encrypts plain CA keys
        checking = await SQLiteBackend.open(data.db_path, seeds)  # with this passphrase
        try:
            await checking.check_totp_seeds()
        finally:
            await checking.close()
    cluster = data.init(args.cluster_name)
    # The CAs of the current rotation phase (hub/rotation_runtime.py), followed live.
    rotation = HubRotation(data, [host, *args.public_addr])
    user_ca, host_ca = rotation.cas.user.signer, rotation.cas.host.signer
    ssl_ctx = rotation.tls_context()
    backend = await SQLiteBackend.open(data.db_path, seeds)
    try:  # encrypt plain TOTP seeds with the CA passphrase (docs/security.md)
        if migrated := await backend.migrate_totp_seeds():
            log.info("TOTP seeds encrypted with the CA passphrase", extra={"users": migrated})
    except RemotelerError:
        await backend.close()
        raise
    await backend.mark_all_offline()
    alive = alive_path(data.path)  # tctl shows nodes online only while this is held
    alive_lock = hold(alive)
    audit = await AuditStore.open(audit_db_path(data.path))
    hash_gate, join_guard = auth_limits(args)
    server = HubServer(
        AuthService(
            backend,
            user_ca,
            host_ca,
            cluster,
            audit=audit,
            hash_gate=hash_gate,
            join_guard=join_guard,
        ),
        backend,
        audit=audit,
        listener_limits=ListenerLimits(
            tunnel_handshakes=max(1, args.max_agent_handshakes),
            tunnel_handshakes_per_addr=max(1, args.max_agent_handshakes_per_addr),
            user_handshakes_per_addr=max(1, args.max_user_handshakes_per_addr),
            max_pending_per_addr=max(1, args.max_pending_per_addr),
            tls_reply_timeout=max(0.5, args.tls_reply_timeout),
        ),
        audit_quota=quota,
    )
    rotation.attach(server)
    bound_host, bound_port = await server.start(host, port, ssl_ctx)
    addr = format_hostport(bound_host, bound_port)
    from hub.admin_identity import for_hub

    admin = for_hub(data.path, server.auth, rotation)  # DATA/admin-identity, before hub.addr
    await admin.renew_if_due()
    data.addr_file.write_text(addr + "\n")
    log.info(
        "hub listening",
        extra={
            "addr": addr,
            "cluster": cluster,
            "ca_pin": rotation.cas.host.server.pin(),
            "data_dir": str(data.path),
        },
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tasks = [
        asyncio.ensure_future(server.registry.run_flusher()),
        asyncio.ensure_future(rotation.run()),
        asyncio.ensure_future(keep_alive(alive)),
    ]
    gc_policy = GcPolicy(max(MIN_INTERVAL, args.gc_interval))
    tasks.append(asyncio.ensure_future(admin.run()))
    if args.gc_interval > 0:
        gc_policy.install()
        tasks.append(asyncio.ensure_future(gc_policy.run()))
    try:
        await stop.wait()
        spread = args.drain_spread
        if spread is None:
            spread = min(120.0, max(5.0, len(server.registry) / 200))
        spread = min(max(spread, 1.0), 3600.0)  # a GOAWAY retry-after is at most an hour
        log.info("hub stopping")
        await server.drain(args.shutdown_grace, spread)
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        gc_policy.uninstall()
        await server.close()
        with contextlib.suppress(Exception):
            await server.registry.flush()
        await backend.mark_all_offline()
        await backend.close()
        await audit.close()
        with contextlib.suppress(FileNotFoundError):
            data.addr_file.unlink()
        stop_alive(alive, alive_lock)


def main(argv: list[str] | None = None) -> int:
    from remoteler import logs, malloc

    malloc.tune()
    args = build_parser().parse_args(argv)
    logs.setup(args.log_level)
    try:
        require_hub_extra()
        asyncio.run(run(args))
    except RemotelerError as err:
        print(f"hub: {err}", file=sys.stderr)
        return err.exit_code
    except OSError as err:
        print(
            f"hub: cannot listen on {args.listen}: {err.strerror or err}; pick another --listen",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
