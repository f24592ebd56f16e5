"""``hub start``: run the hub (auth + proxy) on one TLS port."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from hub.audit.quota import DEFAULT_BURST, DEFAULT_RATE
from hub.extras import require_hub_extra
from hub.net.listener import ListenerLimits
from hub.storage.options import add_storage_flags
from remoteler.clihelp import finish
from remoteler.errors import RemotelerError

log = logging.getLogger("remoteler.hub")
DEFAULT_LISTEN = "127.0.0.1:3080"
SSL_READ_BUFFER = 32 * 1024


EXAMPLES = {"start": "hub start --data-dir /var/lib/remoteler-hub --listen 0.0.0.0:3080"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hub", description="Remoteler hub: auth and proxy")
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="start the hub")
    start.add_argument("--data-dir", default="/var/lib/remoteler-hub", help="state directory")
    start.add_argument(
        "--hub-id",
        default=None,
        help="this hub's id in presence leases (default: made at first start, kept in DATA/hub-id)",
    )
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
        "--public-addr",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="a name agents, users and other hubs reach this hub by, put in its TLS "
        "certificates; the first is what agents of a cluster are told to dial (default: "
        "the --listen address; docs/cluster.md). May be repeated",
    )
    start.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="run N hub processes sharing the --listen port (SO_REUSEPORT), each a member "
        "of the cluster with id ID-wI and peer port PORT+I; needs a fixed --listen port "
        "and --peer-listen (default 1; sizing in docs/cluster.md)",
    )
    start.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    start.add_argument(
        "--peer-listen",
        metavar="HOST:PORT",
        default=None,
        help="listen for the cluster's other hubs here (mutual TLS with hub certificates; "
        "port 0 picks one); needed by hubs sharing one PostgreSQL (default: none, the hub "
        "dials its peers but cannot be reached by them; docs/cluster.md)",
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
    start.add_argument(
        "--audit-retention",
        type=float,
        default=0.0,
        metavar="DAYS",
        help="delete audit events and session recordings older than DAYS, checked every "
        "10 min by one hub of the cluster (default 0: keep forever; docs/audit.md)",
    )
    add_auth_limit_flags(start)
    add_storage_flags(start)
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
    add_web_flags(start)
    start.add_argument("--log-level", default="INFO")
    return finish(parser, "hub", EXAMPLES)


def add_web_flags(start: argparse.ArgumentParser) -> None:
    """The web console on the same port (hub/web, docs/web.md)."""
    start.add_argument(
        "--no-web",
        dest="web",
        action="store_false",
        help="serve no web console, /healthz, /readyz or /metrics",
    )
    start.add_argument(
        "--web-cert",
        default=None,
        metavar="FILE",
        help="PEM chain browsers are given (default: one from the hub's web CA, DATA/web/ca.crt)",
    )
    start.add_argument(
        "--web-key",
        default=None,
        metavar="FILE",
        help="the --web-cert's unencrypted PEM key (default: the web CA's leaf key)",
    )
    start.add_argument(
        "--web-idle-timeout",
        type=float,
        default=30.0,
        metavar="MINUTES",
        help="a web session idle this long ends (default %(default)s)",
    )
    start.add_argument(
        "--metrics-token-file",
        default=None,
        metavar="FILE",
        help="a file holding the bearer token /metrics asks for "
        "(default: none, and /metrics refuses every request)",
    )


def add_auth_limit_flags(start: argparse.ArgumentParser) -> None:
    """Password-hash and join limits (hub/auth/hashgate.py, hub/auth/joinguard.py;
    docs/security.md)."""
    from hub.auth.hashgate import HashGatePolicy
    from hub.auth.joinguard import JoinPolicy

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


async def run(args: argparse.Namespace) -> None:
    """The process-wide settings, then the hub's services (hub/app.py, the composition root)."""
    import asyncio.sslproto
    import resource

    from hub import app
    from hub.net.sslbuffer import share_ssl_read_buffer

    # asyncio gives every TLS connection its own 256 KiB read buffer: 2.5 GiB for
    # 10,000 idle agents. All connections share one (hub/net/sslbuffer.py); if this
    # Python's asyncio is not as expected, fall back to small per-connection ones.
    if not share_ssl_read_buffer():
        asyncio.sslproto.SSLProtocol.max_size = SSL_READ_BUFFER

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # one descriptor per agent
    await app.run(args)


def main(argv: list[str] | None = None) -> int:
    from remoteler import logs, malloc

    malloc.tune()
    args = build_parser().parse_args(argv)
    logs.setup(args.log_level)
    from hub.storage.api import StorageError

    try:
        require_hub_extra()
        if args.workers != 1 and args.worker_index is None:
            from hub.workers import supervise

            return supervise(args, list(sys.argv[1:] if argv is None else argv))
        asyncio.run(run(args))
    except RemotelerError as err:
        print(f"hub: {err}", file=sys.stderr)
        return err.exit_code
    except StorageError as err:  # the database failed while serving: one line
        print(f"hub: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        print(
            f"hub: cannot listen on {args.listen}: {err.strerror or err}; pick another --listen",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
