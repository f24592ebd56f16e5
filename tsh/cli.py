"""``tsh``: log in to a hub, list nodes, and SSH to devices behind NAT.

Imports are lazy: ``tsh`` start-up time is part of every ``tsh ssh``.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from remoteler import sshalgs
from remoteler.clihelp import finish
from remoteler.errors import (
    AccessDenied,
    AuthError,
    HubUnreachable,
    NodeError,
    RemotelerError,
    TrustError,
    UsageError,
)
from remoteler.textfmt import fmt_time, table


def _add_common(p: argparse.ArgumentParser, top: bool) -> None:
    default = None if top else argparse.SUPPRESS
    p.add_argument(
        "--proxy",
        default=default,
        help="hub HOST:PORT (default: $TSH_PROXY, else the hub of your current login)",
    )
    p.add_argument(
        "-i",
        "--identity",
        default=default,
        help="identity file from 'tctl auth sign' (default: the keys of your current login)",
    )


LOGIN_HELP = (
    "remote login, or give login@node (default: the first login your certificate allows, "
    "see 'tsh status')"
)
EXAMPLES = {
    "login": "tsh login --proxy hub.example.com:3080 --user alice --ca-pin sha256:<pin>\n"
    "tsh login      # again, as the last user to the last hub",
    "ls": "tsh ls env=prod --format json",
    "console": "tsh console pi@truck-042 --port ttyUSB0 --baud 115200",
    "ssh": "tsh ssh pi@truck-042 uptime\ntsh ssh -N -L 8080:127.0.0.1:80 truck-042",
    "scp": "tsh scp -r ./logs pi@truck-042:/tmp/",
    "status": "tsh status --format json",
    "play": "tsh play 3f2a9c1e --speed 4",
    "logout": "tsh logout",
    "proxy": "tsh proxy ssh pi@truck-042.remoteler:22   # what 'tsh config' puts in ssh_config",
    "proxy ssh": "tsh proxy ssh pi@truck-042.remoteler:22",
    "config": "tsh config > remoteler.ssh_config && ssh -F remoteler.ssh_config "
    "pi@truck-042.remoteler",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tsh", description="Remoteler client")
    _add_common(p, True)
    sub = p.add_subparsers(dest="command", required=True)

    login = sub.add_parser("login", help="log in and get short-lived certificates")
    _add_common(login, False)
    login.add_argument(
        "--user",
        help="user name (default: $TSH_USER, else the user of the last login to this hub, "
        "else $USER)",
    )
    login.add_argument(
        "--ca-pin",
        help="sha256:... from 'tctl status' or the invite (default: the pin remembered for "
        "this hub, else trust on first use)",
    )
    login.add_argument(
        "--ttl",
        help="certificate lifetime, e.g. 8h (default: your roles' max_session_ttl, 12h unless "
        "set; always capped by it)",
    )
    login.add_argument("--otp", help="one-time code (default: prompted, or the next line of stdin)")
    login.add_argument(
        "--invite", help="invite token from 'tctl users add' (default: none, a password login)"
    )
    login.add_argument(
        "--auth",
        metavar="CONNECTOR",
        help="log in through this SSO connector in a browser, or 'local' for password + TOTP "
        "(default: the cluster's default connector, else local; docs/sso.md)",
    )
    login.add_argument(
        "--browser",
        choices=["none"],
        help="'none': print the SSO login URL instead of opening a browser (default: open it)",
    )

    ls = sub.add_parser("ls", help="list nodes")
    _add_common(ls, False)
    ls.add_argument("labels", nargs="*", help="filter: k=v ...")
    ls.add_argument("--format", choices=["text", "json"], default="text")
    ls.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="also version, serial ports, clock skew, agent capabilities (default: off)",
    )

    console = sub.add_parser("console", help="a node's serial console (docs/serial-console.md)")
    _add_common(console, False)
    console.add_argument("-l", "--login", help=LOGIN_HELP)
    console.add_argument(
        "--port", help="serial port from 'tsh ls -v' (default: the node's only one)"
    )
    console.add_argument("--baud", default="115200", help="baud rate (default 115200)")
    console.add_argument(
        "--read-only", action="store_true", help="watch only; may share a port someone writes to"
    )
    console.add_argument("target", help="[login@]node")

    ssh = sub.add_parser("ssh", help="run a shell or command on a node")
    _add_common(ssh, False)
    group = ssh.add_mutually_exclusive_group()
    group.add_argument("-t", dest="pty", action="store_const", const=True, help="force a pty")
    group.add_argument("-T", dest="pty", action="store_const", const=False, help="disable the pty")
    ssh.add_argument("-l", "--login", help=LOGIN_HELP)
    ssh.add_argument(
        "-c",
        dest="cipher",
        help=f"one cipher, of {', '.join(sshalgs.CIPHERS)} (default: all of them, in that "
        "order; nothing weaker is offered)",
    )
    ssh.add_argument(
        "-L",
        dest="local_forwards",
        action="append",
        default=[],
        metavar="[BIND:]PORT:HOST:HOSTPORT",
        help="forward a local port to HOST:HOSTPORT as seen from the node (repeatable)",
    )
    ssh.add_argument("-N", dest="no_command", action="store_true", help="run no command (-L)")
    ssh.add_argument("target", help="[login@]node")
    ssh.add_argument("cmd", nargs=argparse.REMAINDER, help="command to run")

    scp = sub.add_parser("scp", help="copy files to or from a node (SFTP)")
    _add_common(scp, False)
    scp.add_argument("-r", dest="recurse", action="store_true", help="copy directories")
    scp.add_argument("-p", dest="preserve", action="store_true", help="keep times and modes")
    scp.add_argument("-q", dest="quiet", action="store_true", help="no progress bar")
    scp.add_argument("paths", nargs="+", metavar="PATH", help="SRC... DST (login@node:path)")

    status = sub.add_parser("status", help="show the current login")
    _add_common(status, False)
    status.add_argument("--format", choices=["text", "json"], default="text")
    play = sub.add_parser("play", help="replay a recorded session")
    _add_common(play, False)
    play.add_argument("session_id", help="a session id, or the start of one ('tctl audit search')")
    play.add_argument("--speed", type=float, default=1.0, help="playback speed factor")
    play.add_argument(
        "--format", choices=["tty", "text", "json"], default="tty", help="tty replays with timing"
    )
    logout = sub.add_parser("logout", help="remove keys and certificates")
    _add_common(logout, False)
    proxy = sub.add_parser("proxy", help="relay for OpenSSH's ProxyCommand (see 'tsh config')")
    _add_common(proxy, False)
    proxy_sub = proxy.add_subparsers(dest="proxy_kind", required=True)
    proxy_ssh = proxy_sub.add_parser("ssh", help="relay stdin/stdout to a node's SSH server")
    _add_common(proxy_ssh, False)
    proxy_ssh.add_argument("target", help="login@host:port (ssh's %%r@%%h:%%p)")
    config = sub.add_parser("config", help="print an ssh_config block for OpenSSH")
    _add_common(config, False)
    return finish(p, "tsh", EXAMPLES)


def _read_secret(prompt: str) -> str:
    if sys.stdin.isatty():
        return getpass.getpass(prompt)
    line = sys.stdin.readline()
    if not line:
        raise UsageError(
            f"no input for {prompt.strip().rstrip(':')}: give it on stdin or a terminal"
        )
    return line.rstrip("\n")


def _identity(args: argparse.Namespace) -> tuple[str, Any]:
    """(hub, identity) from ``-i`` or from the current profile; checks expiry."""
    from remoteler.identity import check_not_expired, read_identity_file
    from tsh.profile import Profile

    if args.identity:
        if not args.proxy:
            raise UsageError("with -i give the hub too: tsh -i FILE --proxy HOST:PORT ...")
        ident = read_identity_file(Path(args.identity))
        hub = args.proxy
    else:
        profile = Profile.load()
        if profile is None:
            raise AuthError("not logged in: run 'tsh login --proxy HOST:PORT --user NAME'")
        if args.proxy and args.proxy != profile.hub:
            raise AuthError(f"not logged in to {args.proxy}: run 'tsh login --proxy {args.proxy}'")
        hub = profile.hub
        if not profile.key_path.exists():
            raise AuthError("your keys are missing: run 'tsh login'")
        ident = read_identity_file(profile.key_path)
    try:
        check_not_expired(ident, time.time())
    except AuthError:
        if not args.identity:
            raise
        raise AuthError(
            f"the identity {args.identity} has expired: write a new one with 'tctl auth sign'"
        ) from None
    return hub, ident


PIN_RE = re.compile(r"sha256:[0-9a-f]{64}")


def login_hub(proxy: str | None, profile: Any, last: tuple[str, str] | None) -> str:
    """The hub of ``tsh login``: --proxy (or $TSH_PROXY, filled in by main), then the
    current profile's, then the last login's."""
    hub = proxy or (profile.hub if profile else None) or (last[0] if last else None)
    if not hub:
        raise UsageError("give the hub: tsh login --proxy HOST:PORT --user NAME")
    return str(hub)


def login_target(
    proxy: str | None, user: str | None, profile: Any, last: tuple[str, str] | None
) -> tuple[str, str]:
    """(hub, user) for ``tsh login``: flags, then $TSH_PROXY / $TSH_USER, then the
    current profile, then the last login (kept by ``tsh logout``), then $USER."""
    hub = login_hub(proxy, profile, last)
    user = user or os.environ.get("TSH_USER") or None
    if not user and profile is not None and profile.hub == hub:
        user = profile.user
    if not user and last is not None and last[0] == hub:
        user = last[1]
    user = user or os.environ.get("USER") or ""
    if not user:
        raise UsageError("give a user name: tsh login --user NAME")
    return hub, user


async def cmd_login(args: argparse.Namespace) -> int:
    from remoteler.ca import generate_private_key, pin_of_cert_pem, public_key_to_openssh
    from remoteler.hubconn import check_pin, fetch_cluster_info, rpc_call
    from remoteler.identity import UserIdentity, write_identity_file
    from remoteler.tlsutil import client_context
    from tsh.agentkeys import add_to_agent
    from tsh.profile import Profile, known_pin, last_login, remember_login, remember_pin

    profile, last = Profile.load(), last_login()
    hub = login_hub(args.proxy, profile, last)
    if args.ca_pin and not PIN_RE.fullmatch(args.ca_pin.strip().lower()):
        raise UsageError(
            f"bad --ca-pin {args.ca_pin[:80]!r}: give sha256:<64 hex digits> from 'tctl status'"
        )
    info = await fetch_cluster_info(hub)
    pin = pin_of_cert_pem(info["host_ca_pem"].encode())
    if args.ca_pin:
        check_pin(info, args.ca_pin)  # the pin, not trust on first use, vouches for the hub
    else:
        remembered = known_pin(hub)
        if remembered and remembered != pin:
            raise TrustError(
                f"the hub at {hub} now presents CA {pin}, not {remembered} as before; "
                "if the CA was really changed, log in with --ca-pin from 'tctl status'"
            )
        if not remembered:
            print(f"Trusting the hub at {hub} on first use, CA pin {pin}", file=sys.stderr)
    ca_pem = info["host_ca_pem"].encode()
    ctx = client_context(ca_pem)
    key = generate_private_key()
    ttl = None
    if args.ttl:
        from remoteler.addr import parse_ttl

        ttl = parse_ttl(args.ttl)
    connector = None if args.invite else (args.auth or info.get("auth_connector"))
    if connector and connector != "local":
        from tsh.sso import sso_login

        async def call(method: str, **params: Any) -> Any:
            return await rpc_call(hub, ctx, method, **params)

        public_key = public_key_to_openssh(key.public_key())
        result = await sso_login(call, connector, public_key, ttl, args.browser or "default")
        args.user = str(result["user"])
    else:
        hub, args.user = login_target(hub, args.user, profile, last)
        result = await _password_login(args, hub, ctx, key, ttl)
    if len(info.get("host_ca_pems") or []) > 1:
        # A host CA rotation is under way: trust both CAs, as told over a verified connection.
        verified = await rpc_call(hub, ctx, "ping")
        ca_pem = "".join(verified.get("host_ca_pems") or [info["host_ca_pem"]]).encode()
    new = Profile(hub=hub, user=args.user, cluster=str(info.get("cluster", "")), ca_pin=pin)
    write_identity_file(new.key_path, key, result["ssh_cert"], result["tls_cert"].encode(), ca_pem)
    new.save()
    remember_pin(hub, pin)
    remember_login(hub, args.user)
    ident = UserIdentity(key, result["ssh_cert"], result["tls_cert"].encode(), ca_pem)
    in_agent = await add_to_agent(ident)
    print(f"Logged in as {args.user} to {hub} (cluster {new.cluster})")
    print(f"  Logins:      {', '.join(result.get('logins') or []) or '(none)'}")
    print(f"  Valid until: {fmt_time(result.get('expires'))}")
    if ttl and int(result.get("expires") or 0) < int(time.time()) + ttl - 60:
        print(f"  (shorter than --ttl {args.ttl}: capped by your roles' max_session_ttl)")
    if in_agent:
        print("  Key and certificate loaded into your ssh-agent")
    return 0


async def _password_login(
    args: argparse.Namespace, hub: str, ctx: Any, key: Any, ttl: int | None
) -> Any:
    from remoteler.ca import public_key_to_openssh
    from remoteler.hubconn import rpc_call

    params: dict[str, Any] = {
        "user": args.user,
        "public_key": public_key_to_openssh(key.public_key()),
    }
    if args.invite:
        setup = await rpc_call(hub, ctx, "invite.info", user=args.user, invite=args.invite)
        print(
            "Add this account to your authenticator app:\n"
            f"  secret: {setup['totp_secret']}\n  uri:    {setup['totp_uri']}",
            file=sys.stderr,
        )
        password = _read_secret("New password: ")
        if sys.stdin.isatty() and _read_secret("Repeat password: ") != password:
            raise UsageError("the passwords differ; run the command again")
        otp = args.otp or _read_secret("One-time code: ")
        result = await rpc_call(
            hub,
            ctx,
            "invite.accept",
            invite=args.invite,
            password=password,
            otp=otp,
            ttl=ttl,
            **params,
        )
    else:
        password = _read_secret(f"Password for {args.user}: ")
        otp = args.otp or _read_secret("One-time code: ")
        result = await rpc_call(hub, ctx, "login", password=password, otp=otp, ttl=ttl, **params)
    return result


async def cmd_ls(args: argparse.Namespace) -> int:
    from remoteler.addr import format_labels, parse_labels
    from remoteler.hubconn import rpc_call
    from remoteler.tlsutil import client_context

    want = parse_labels(",".join(args.labels))
    hub, ident = _identity(args)
    ctx = client_context(ident.host_ca_pem, ident.tls_cert, ident.key_pem)
    nodes = await rpc_call(hub, ctx, "nodes.list", labels=want)
    if args.format == "json":
        print(json.dumps(nodes, indent=2, sort_keys=True))  # [] when none: stdout stays JSON
        return 0
    if not nodes:  # stdout stays empty for scripts; the person reads stderr
        which = f" {format_labels(want)}" if want else ""
        print(f"no nodes match{which} (or none you may access)", file=sys.stderr)
        return 0
    rows = [
        [
            n["name"],
            format_labels(n["labels"]),
            "online" if n["online"] else "offline",
            fmt_time(n["last_seen"]),
            n.get("recording", "off"),  # an older hub does not say: end to end
        ]
        for n in nodes
    ]
    headers = ["Node", "Labels", "Status", "Last seen", "Recording"]
    if args.verbose:
        from remoteler.clockskew import format_skew

        headers += ["Version", "Serial ports", "Clock", "Caps"]
        for row, n in zip(rows, nodes, strict=True):
            row += [n.get("version") or "", ",".join(n.get("serial_ports") or []) or "-"]
            skew = n.get("clock_skew")  # device minus hub; an older hub does not say
            row.append(format_skew(skew if isinstance(skew, (int, float)) else None))
            # what the agent supports; "-": an older agent (or hub), which has none
            row.append(",".join(n.get("caps") or []) or "-")
    print(table(rows, headers))
    return 0


async def cmd_ssh(args: argparse.Namespace) -> int:
    from tsh.ssh import node_errors, open_ssh, run_session

    login, _, node = args.target.rpartition("@")
    login = args.login or login
    if not node:
        raise UsageError("give the node: tsh ssh [login@]node [command]")
    if args.no_command and args.cmd:
        raise UsageError("-N runs no command: drop the command or -N")
    forwards = []
    if args.local_forwards:
        from tsh.forward import parse_local_forward, start_local_forwards

        forwards = [parse_local_forward(spec) for spec in args.local_forwards]
    hub, ident = _identity(args)
    login = login or _default_login(ident)
    if forwards:
        await _check_forwarding(hub, ident, login, node)  # refused: fail before binding
    ciphers = [args.cipher] if args.cipher else None
    conn = await open_ssh(hub, ident, login, node, ciphers)
    # A refused session (e.g. the login does not exist there) or a dead tunnel / hub:
    # as ssh, exit 255 with one line rather than a traceback.
    lost = (
        "the node hangs up the command when it notices. Run 'tsh ls' to see when the node is back"
    )
    try:
        with node_errors(node, lost):
            if forwards:
                await start_local_forwards(conn, forwards)
            if args.no_command:
                await conn.wait_closed()
                raise NodeError(f"connection to {node!r} closed")
            return await run_session(conn, list(args.cmd), args.pty)
    finally:
        conn.close()


def _default_login(ident: Any) -> str:
    """The first login the certificate allows (as Teleport's default login)."""
    for login in ident.logins:
        if not login.startswith("-"):  # "-remoteler-no-login-USER": a placeholder
            return str(login)
    raise UsageError("your certificate allows no login: ask an admin to add one to your roles")


async def _check_forwarding(hub: str, ident: Any, login: str, node: str) -> None:
    """AccessDenied with the role's reason if ``-L`` would be refused on ``node``.

    The certificate carries what the device decides on (the permit-port-forwarding
    extension and the signed rules); the node's labels come from ``nodes.list``.
    """
    from remoteler.hubconn import rpc_call
    from remoteler.tlsutil import client_context
    from tsh.forward import forward_refusal

    reason = forward_refusal(ident.ssh_cert, login, node, None)
    if reason is None:
        ctx = client_context(ident.host_ca_pem, ident.tls_cert, ident.key_pem)
        nodes = await rpc_call(hub, ctx, "nodes.list", labels={})
        found = [n for n in nodes if node in (n.get("name"), n.get("id"))]
        if found:  # a node we cannot list: the connection says "not found or denied"
            reason = forward_refusal(ident.ssh_cert, login, node, found[0].get("labels") or {})
    if reason is not None:
        raise AccessDenied(f"-L refused: {reason}")


async def cmd_scp(args: argparse.Namespace) -> int:
    from tsh.scp import make_plan, scp

    plan = make_plan(args.paths)
    hub, ident = _identity(args)
    return await scp(hub, ident, plan, args.recurse, args.preserve, args.quiet)


async def cmd_console(args: argparse.Namespace) -> int:
    from remoteler.console import parse_baud
    from tsh.console import run_console
    from tsh.ssh import node_errors, open_ssh

    login, _, node = args.target.rpartition("@")
    login = args.login or login
    if not node:
        raise UsageError("give the node: tsh console [login@]node [--port PATH]")
    try:
        baud = parse_baud(args.baud)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    hub, ident = _identity(args)
    login = login or _default_login(ident)
    conn = await open_ssh(hub, ident, login, node)
    try:
        with node_errors(node, "run 'tsh ls' to see when it is back"):
            return await run_console(conn, args.port, baud, args.read_only)
    finally:
        conn.close()


async def cmd_status(args: argparse.Namespace) -> int:
    from tsh.profile import Profile

    profile = Profile.load()
    if profile is None and not args.identity:
        raise AuthError("not logged in: run 'tsh login --proxy HOST:PORT --user NAME'")
    from remoteler.identity import read_identity_file

    path = Path(args.identity) if args.identity else profile.key_path  # type: ignore[union-attr]
    ident = read_identity_file(path)
    expires = ident.valid_before
    data = {
        "hub": args.proxy or (profile.hub if profile else ""),
        "cluster": profile.cluster if profile else "",
        "user": ident.user,
        "logins": list(ident.logins),
        "valid_until": expires,
        "expired": expires <= time.time(),
        "ca_pin": profile.ca_pin if profile else "",
    }
    if args.format == "json":
        print(json.dumps(data, indent=2, sort_keys=True))
        return 0
    state = "EXPIRED: run 'tsh login'" if data["expired"] else f"valid until {fmt_time(expires)}"
    print(f"> Hub:     {data['hub']} (cluster {data['cluster']})")
    print(f"  User:    {data['user']}")
    print(f"  Logins:  {', '.join(data['logins'])}")  # type: ignore[arg-type]
    print(f"  Certificate {state}")
    return 0


async def cmd_play(args: argparse.Namespace) -> int:
    from remoteler.hubconn import rpc_call
    from remoteler.tlsutil import client_context
    from tsh.play import check_found, dump, replay, session_frames

    if not args.speed > 0:
        raise UsageError("--speed must be positive, e.g. 2 for twice as fast")
    hub, ident = _identity(args)
    ctx = client_context(ident.host_ca_pem, ident.tls_cert, ident.key_pem)
    events = await rpc_call(hub, ctx, "audit.session", session_id=args.session_id)
    check_found(events, args.session_id)
    frames = session_frames(events)
    if args.format == "tty":
        await replay(frames, args.speed, sys.stdout.fileno())
    else:
        dump(frames, args.format)
    return 0


async def cmd_logout(args: argparse.Namespace) -> int:
    from remoteler.ca import CAError
    from remoteler.identity import read_identity_file, remove_identity_file
    from tsh.agentkeys import remove_from_agent
    from tsh.profile import Profile

    profile = Profile.load()
    if profile is None:
        print("Not logged in.")
        return 0
    try:
        removed = await remove_from_agent(read_identity_file(profile.key_path))
    except (RemotelerError, CAError):
        removed = 0
    remove_identity_file(profile.key_path)
    Profile.remove()
    extra = " and from your ssh-agent" if removed else ""
    print(f"Logged out {profile.user} from {profile.hub}: keys removed{extra}.")
    return 0


async def cmd_proxy(args: argparse.Namespace) -> int:
    from tsh.profile import Profile
    from tsh.proxy import parse_target, proxy_ssh

    profile = Profile.load()
    hub, ident = _identity(args)
    if args.identity or profile is None:
        from tsh.config import cluster_of

        cluster = cluster_of(ident)  # an identity file with no 'tsh login' (automation)
    else:
        cluster = profile.cluster
    login, node = parse_target(args.target, cluster)
    return await proxy_ssh(hub, ident, login, node)


async def cmd_config(args: argparse.Namespace) -> int:
    import shlex

    from tsh.config import cluster_of, ssh_config, tsh_command, write_known_hosts
    from tsh.profile import Profile

    hub, ident = _identity(args)
    tsh = tsh_command()
    if args.identity:
        # An identity from 'tctl auth sign' (automation): the block names its files, and
        # the ProxyCommand carries -i and --proxy, so no 'tsh login' profile is needed.
        key_path = Path(args.identity).resolve()
        cluster = cluster_of(ident)
        tsh += f" -i {shlex.quote(str(key_path))} --proxy {shlex.quote(hub)}"
    else:
        profile = Profile.load()
        if profile is None or not profile.cluster:
            raise UsageError("'tsh config' describes the current login: run 'tsh login' first")
        key_path, cluster = profile.key_path, profile.cluster
    known_hosts = key_path.with_name(f"{key_path.name}-known_hosts")
    write_known_hosts(known_hosts, ident, cluster)
    print(ssh_config(cluster, key_path, known_hosts, tsh), end="")
    return 0


def _rotated(args: argparse.Namespace) -> RemotelerError | None:
    """An AuthError saying to log in again if a CA rotation made our certificates useless."""
    from tsh.profile import rotation_notice

    try:
        hub, ident = _identity(args)
        notice = asyncio.run(rotation_notice(hub, ident.host_ca_pem, ident.tls_cert))
    except Exception:  # the original error says more than a failed diagnosis
        return None
    return AuthError(notice) if notice else None


COMMANDS = {
    "login": cmd_login,
    "ls": cmd_ls,
    "ssh": cmd_ssh,
    "console": cmd_console,
    "scp": cmd_scp,
    "status": cmd_status,
    "logout": cmd_logout,
    "play": cmd_play,
    "proxy": cmd_proxy,
    "config": cmd_config,
}


def main(argv: list[str] | None = None) -> int:
    from remoteler import malloc

    malloc.tune()
    args = build_parser().parse_args(argv)
    args.proxy = args.proxy or os.environ.get("TSH_PROXY") or None
    try:
        from tsh.resume import hangup_ends_sessions

        hangup_ends_sessions()  # tsh's own process: a hang-up ends a resumable session
        return asyncio.run(COMMANDS[args.command](args))
    except RemotelerError as err:
        rotatable = args.command in ("ls", "ssh", "scp", "play", "proxy")
        if rotatable and isinstance(err, (TrustError, HubUnreachable)):
            err = _rotated(args) or err
        print(f"tsh: {err}", file=sys.stderr)
        scp_conn = args.command == "scp" and not isinstance(err, UsageError)
        return 255 if args.command in ("ssh", "proxy") or scp_conn else err.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
