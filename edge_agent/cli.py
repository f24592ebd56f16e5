"""``edge-agent start``: join once, then keep tunnels to the hubs up for ever."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable
from functools import partial
from pathlib import Path

from edge_agent import jointoken
from remoteler.clihelp import finish
from remoteler.clockskew import DEFAULT_MAX_SKEW
from remoteler.errors import RemotelerError, UsageError

log = logging.getLogger("remoteler.agent")


EXAMPLES = {
    "start": "edge-agent start --hub hub.example.com:3080 --token-file /run/secrets/join-token "
    "--ca-pin sha256:<pin> --name truck-042 --labels env=prod --data-dir /var/lib/remoteler-agent\n"
    "edge-agent start --config /etc/remoteler/agent.toml",
    "health": "edge-agent health --data-dir /var/lib/remoteler-agent",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-agent", description="Remoteler edge agent")
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="join (first start) and serve the tunnel")
    start.add_argument(
        "--config",
        help="TOML file with a key for any flag below (default: $REMOTELER_AGENT_CONFIG, "
        "else /etc/remoteler/agent.toml if it exists); flags given here win",
    )
    start.add_argument("--hub", help="hub HOST:PORT (default: none; needed to join)")
    start.add_argument(
        "--token-file",
        metavar="FILE",
        help="file holding the join token (default: none; first start only; "
        "or $REMOTELER_JOIN_TOKEN)",
    )
    start.add_argument(
        "--token",
        help="join token (default: none; first start only); visible in ps: prefer --token-file",
    )
    start.add_argument(
        "--ca-pin", help="sha256:... pin of the hub CA (default: none; first start only)"
    )
    start.add_argument("--name", default=socket.gethostname(), help="node name (default: hostname)")
    start.add_argument("--labels", default="", help="k=v,k2=v2")
    start.add_argument("--data-dir", default="/var/lib/remoteler-agent")
    start.add_argument(
        "--reconnect-max", type=float, default=60.0, help="cap of the reconnect backoff, seconds"
    )
    start.add_argument(
        "--heartbeat-interval", type=float, default=60.0, help="seconds between heartbeats"
    )
    start.add_argument(
        "--allowed-misses", type=int, default=2, help="missed heartbeats before the tunnel is dead"
    )
    start.add_argument(
        "--resume-grace",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="how long a session whose link broke is kept for its user to resume "
        "(docs/resume.md; 0 turns resumption off; default 300)",
    )
    start.add_argument(
        "--resume-buffer",
        type=int,
        default=4 << 20,
        metavar="BYTES",
        help="replay buffer per direction of a resumable session (default 4 MiB)",
    )
    start.add_argument(
        "--local-listen",
        metavar="HOST:PORT",
        help="also serve SSH on this local address (technicians on site; off by default)",
    )
    start.add_argument(
        "--serial-port",
        dest="serial_ports",
        action="append",
        default=[],
        metavar="PATH",
        help="offer this serial port to 'tsh console' (repeatable; docs/serial-console.md)",
    )
    start.add_argument(
        "--ssh-target",
        metavar="HOST:PORT",
        help="forward mode: relay SSH sessions to the device's own sshd here, e.g. "
        "127.0.0.1:22, instead of the embedded server (default: none, the embedded server; "
        "docs/legacy-devices.md)",
    )
    start.add_argument(
        "--firmware-key",
        action="append",
        default=[],
        metavar="FILE",
        help="trust firmware bundles signed by the ssh-ed25519 key(s) in FILE (repeatable; "
        "without one the agent refuses roll-outs: docs/firmware-rollouts.md)",
    )
    start.add_argument(
        "--firmware-allow-downgrade",
        action="store_true",
        help="let a roll-out pushed with --force downgrade or re-install this device's "
        "firmware (off: such offers are refused; docs/firmware-rollouts.md)",
    )
    start.add_argument(
        "--firmware-health-check",
        metavar="CMD",
        help="shell command run in the new firmware slot after an install; "
        "a non-zero exit rolls back to the previous slot (default: none, no check)",
    )
    start.add_argument(
        "--sftp-server",
        default="builtin",
        metavar="PATH",
        help="what serves sftp and scp: 'builtin' (default: the agent's own server, no "
        "OpenSSH needed) or the path of OpenSSH's sftp-server (docs/openssh.md)",
    )
    start.add_argument(
        "--max-clock-skew",
        type=float,
        default=DEFAULT_MAX_SKEW,
        metavar="SECONDS",
        help="how far this device's clock may be off the hub's and still be corrected for "
        "(certificates, audit times; default: 86400, a day; docs/tunnels.md 'Clock skew')",
    )
    start.add_argument("--audit-quota", default="256MiB", help="outbox size cap, e.g. 256MiB")
    start.add_argument(
        "--audit-policy",
        choices=["drop-recordings-first", "refuse-sessions"],
        default="drop-recordings-first",
        help="what to do when the outbox is full",
    )
    start.add_argument(
        "--audit-reserve",
        help="free disk space recordings and new sessions never use, kept for session "
        "ends and audit.dropped, e.g. 8MiB (default: the larger of 2MiB and 5%% of the "
        "data dir's file system, at most 64MiB)",
    )
    start.add_argument("--log-level", default="INFO")
    health = sub.add_parser("health", help="exit 0 if the agent runs and its tunnel is up")
    health.add_argument(
        "--config", help="the agent's config file, for its data-dir (default: none)"
    )
    health.add_argument("--data-dir", help="default: the config's, else /var/lib/remoteler-agent")
    health.add_argument(
        "--max-down", type=float, default=300.0, help="unhealthy once the tunnel is down longer"
    )
    health.add_argument(
        "--stale-after", type=float, default=180.0, help="unhealthy if the status is older"
    )
    return finish(parser, "edge-agent", EXAMPLES)


def health_main(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from edge_agent import config
    from edge_agent.health import check

    data_dir = args.data_dir
    path = config.resolve_path(args.config, os.environ)
    start = config.subparser(parser, "start")
    if data_dir is None and path is not None:
        data_dir = config.load(path, start).get("data_dir")
    data = Path(data_dir or start.get_default("data_dir"))
    problem = check(data, args.max_down, args.stale_after)
    if problem is not None:
        print(f"edge-agent: unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


def _join_token(args: argparse.Namespace, required: bool) -> str | None:
    """The join token from ``--token-file``, ``--token`` or the environment (taken by
    :func:`main`); a warning line to stderr if its file is readable by others.

    When the agent has joined already (``required`` false), a token file that is gone or
    unreadable only means there is no token: the node rejoins no more by itself.
    """
    try:
        token, warning = jointoken.join_token(
            args.token, args.token_file, getattr(args, "env_token", None)
        )
    except RemotelerError as err:
        if required:
            raise
        log.info("no join token for a rejoin: %s", err)
        return None
    if warning:
        print(warning, file=sys.stderr)
    return token


async def run(args: argparse.Namespace) -> None:
    from edge_agent.agent import EdgeAgent
    from edge_agent.health import keep_status
    from edge_agent.identity import NodeIdentity
    from edge_agent.join import join, join_until_done
    from edge_agent.local import start_local_listener
    from edge_agent.locks import LockStore
    from edge_agent.outbox_open import open_outbox
    from edge_agent.serial_ports import normalize_ports
    from edge_agent.tunnel_slots import Backoff
    from remoteler.addr import parse_hostport, parse_labels, parse_size
    from remoteler.protocol import VERSION
    from remoteler.wire.limits import Limits

    try:
        serial_ports = normalize_ports(args.serial_ports)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    from edge_agent.sftp_config import configure as configure_sftp  # no SSH imports yet

    configure_sftp(args.sftp_server)
    data_dir = Path(args.data_dir)
    labels = parse_labels(args.labels)
    from edge_agent.datadir_lock import DataDirLock

    # One agent per data dir, until this process ends (a first start locks after its mkdir).
    held = DataDirLock.acquire(data_dir) if data_dir.exists() else None
    quota = parse_size(args.audit_quota)
    reserve = parse_size(args.audit_reserve) if args.audit_reserve else None
    local_addr = parse_hostport(args.local_listen) if args.local_listen else None
    ssh_target = parse_hostport(args.ssh_target) if args.ssh_target else None
    if ssh_target is not None and local_addr is not None:
        raise UsageError(
            "--local-listen serves the embedded SSH server, --ssh-target forwards to the "
            "device's sshd: give one (technicians on site can reach that sshd directly)"
        )
    if ssh_target is not None and serial_ports:
        raise UsageError(
            "--serial-port is served by the embedded SSH server, which --ssh-target replaces: "
            "drop one of them (docs/serial-console.md)"
        )
    if args.resume_grace < 0 or not 256 * 1024 <= args.resume_buffer <= 64 << 20:
        raise UsageError(
            "--resume-grace must be 0 or more seconds and --resume-buffer between "
            "262144 and 67108864 bytes"
        )
    if args.heartbeat_interval <= 0 or args.allowed_misses < 1 or args.reconnect_max <= 0:
        raise UsageError(
            "--heartbeat-interval, --allowed-misses and --reconnect-max must be positive"
        )
    backoff = Backoff(base=min(1.0, args.reconnect_max), cap=args.reconnect_max)

    def joining(token: str) -> Awaitable[NodeIdentity]:
        """The join, tried again while the hub cannot be reached (the modem may be
        coming up); a token, pin or name refused stops the start at once."""
        attempt = partial(
            join, args.hub, token, args.ca_pin, args.name, labels, VERSION, args.max_clock_skew
        )
        return join_until_done(attempt, args.hub, backoff.delay)

    token = None
    if not 0 <= args.max_clock_skew <= 366 * 86400:  # also refuses nan
        raise UsageError("--max-clock-skew must be 0 to 31622400 seconds (a year), e.g. 86400")
    if not NodeIdentity.exists(data_dir) or (args.hub and args.ca_pin):
        token = _join_token(args, required=not NodeIdentity.exists(data_dir))
    if NodeIdentity.exists(data_dir) and token and args.hub and args.ca_pin:
        from edge_agent.rotate import needs_rejoin

        old = NodeIdentity.load(data_dir)
        try:
            rotated = await needs_rejoin(old, args.hub, args.ca_pin)
        except RemotelerError as err:  # a device booting offline must still start its loop
            log.warning("cannot check the hub's CA now: %s", err, extra={"node_id": old.node_id})
            rotated = False
        if rotated:  # CA rotated while we were away
            log.warning("the hub's CA changed; joining again", extra={"node_id": old.node_id})
            ident = await joining(token)
            ident.save(data_dir)
    if NodeIdentity.exists(data_dir):
        ident = NodeIdentity.load(data_dir)
        from edge_agent.identity_check import check_identity

        check_identity(ident, NodeIdentity.directory(data_dir), time.time(), args.max_clock_skew)
        if token or args.token or args.token_file:
            log.info(
                "already joined; the join token is not needed", extra={"node_id": ident.node_id}
            )
    else:
        missing = [
            flag
            for flag, value in (
                ("--hub", args.hub),
                (f"--token-file (or ${jointoken.ENV_VAR})", token),
                ("--ca-pin", args.ca_pin),
            )
            if not value
        ]
        if missing or token is None:
            raise UsageError(
                f"first start needs {', '.join(missing)}: "
                "get them from 'tctl tokens add --type node'"
            )
        parse_hostport(args.hub)
        data_dir.mkdir(parents=True, exist_ok=True)
        held = held or DataDirLock.acquire(data_dir)
        ident = await joining(token)
        ident.save(data_dir)
    limits = Limits(
        send_heartbeats=True,
        heartbeat_interval=args.heartbeat_interval,
        allowed_misses=args.allowed_misses,
    )
    outbox = await open_outbox(  # a damaged or lost audit.db never stops the agent
        data_dir / "audit.db",
        NodeIdentity.directory(data_dir),
        ident.node_id,
        quota_bytes=quota,
        policy=args.audit_policy,
        reserve_bytes=reserve,
    )
    locks = LockStore.load(data_dir / "locks.json", (ident.node_id, ident.name))
    agent = EdgeAgent(
        ident,
        labels,
        limits=limits,
        backoff=backoff,
        outbox=outbox,
        locks=locks,
        serial_ports=serial_ports,
    )
    agent.ssh_target = ssh_target
    agent.resume.grace = args.resume_grace
    agent.resume.buffer = args.resume_buffer
    agent.clock.bound = args.max_clock_skew
    local = None
    if local_addr is not None:
        lhost, lport = local_addr
        local = await start_local_listener(
            lhost, lport, ident, lambda: agent.labels, agent.audit, locks, agent.clock
        )
    from edge_agent.firmware import open_firmware

    agent.firmware = await open_firmware(
        data_dir,
        ident.name,
        args.firmware_key,
        args.firmware_health_check,
        agent.audit,
        lambda: agent.labels,
        VERSION,
        allow_downgrade=args.firmware_allow_downgrade,
    )
    loop = asyncio.get_running_loop()
    main_task = asyncio.ensure_future(agent.run_forever())
    status_task = asyncio.ensure_future(keep_status(data_dir, lambda: agent.tunnel is not None))
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, main_task.cancel)
    try:
        await main_task
    except asyncio.CancelledError:
        log.info("agent stopping")
        await agent.close_tunnels("agent stopping")  # run_forever closed them already
    finally:
        status_task.cancel()
        await asyncio.gather(status_task, return_exceptions=True)
        if local is not None:
            local.close()
        await agent.resume.close()  # detached sessions end (and are audited) now
        await agent.audit.flush()
        await outbox.close()


def main(argv: list[str] | None = None) -> int:
    from edge_agent import config
    from remoteler import logs, malloc

    malloc.tune()
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "health":
            return health_main(parser, args)
        start = config.subparser(parser, "start")
        args = config.apply(parser, start, argv, args)
        args.env_token = jointoken.take_env_token(os.environ)
        if "token" in config.explicit_dests(parser, start, argv):
            print(jointoken.CMDLINE_WARNING, file=sys.stderr)
        logs.setup(args.log_level)
        asyncio.run(run(args))
    except RemotelerError as err:
        print(f"edge-agent: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:  # Ctrl-C before the agent's own handler is up (a join retrying)
        print("edge-agent: interrupted; start it again to carry on", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
