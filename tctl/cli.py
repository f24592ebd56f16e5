"""``tctl``: administer a hub from its host, directly on its data directory.

JSON output (``--format json``) is stable: keys are only ever added. See
docs/tctl.md for every shape.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

from tctl import firmware as tctl_firmware
from tctl import locks as tctl_locks
from tctl import rotate as tctl_rotate
from hub.alive import as_seen
from hub.extras import require_hub_extra
from remoteler.addr import format_labels, parse_labels
from remoteler.audit.events import AuditEvent
from remoteler.clihelp import finish
from remoteler.clockskew import format_skew
from remoteler.errors import RemotelerError, UsageError
from remoteler.textfmt import fmt_time, table

DEFAULT_DATA_DIR = "/var/lib/remoteler-hub"
LOCK_HANDLERS: dict[str, tctl_locks.Handler] = {}


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    if getattr(args, "format", "text") == "json":
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        print(text)


EXAMPLES = {
    "users": "tctl users ls",
    "users add": "tctl users add alice --roles access --logins pi,root",
    "users ls": "tctl users ls --format json",
    "users rm": "tctl users rm alice",
    "users unlock": "tctl users unlock alice",
    "tokens": "tctl tokens ls",
    "tokens add": "tctl tokens add --type node --ttl 1h --labels env=prod",
    "tokens ls": "tctl tokens ls",
    "tokens rm": "tctl tokens rm 3f2a9c1e",
    "nodes": "tctl nodes ls",
    "nodes ls": "tctl nodes ls --format json",
    "nodes rm": "tctl nodes rm truck-042",
    "nodes set": "tctl nodes set legacy-1 --recording proxy",
    "auth": "tctl auth export --type host > known_hosts",
    "auth sign": "tctl auth sign --user jenkins --ttl 8h -o jenkins-id\n"
    "tctl auth sign --host legacy-1 --pubkey ssh_host_ed25519_key.pub "
    "-o ssh_host_ed25519_key-cert.pub",
    "auth export": "tctl auth export --type host > known_hosts\n"
    "tctl auth export --type user > trusted_user_ca_keys.pub",
    "auth rotate": "tctl auth rotate --type host --grace-period 30h",
    "create": "tctl create -f lab-operator.toml",
    "get": "tctl get roles --format json",
    "rm": "tctl rm role/lab-operator",
    "status": "tctl status --data-dir /var/lib/remoteler-hub",
    "lock": 'tctl lock --user bob --ttl 1h --message "incident 42"',
    "locks": "tctl locks ls",
    "locks ls": "tctl locks ls --format json",
    "unlock": "tctl unlock 3f2a9c1e",
    "firmware": "tctl firmware status",
    "firmware trust": "tctl firmware trust fw-signing.key.pub\ntctl firmware trust ls",
    "firmware untrust": "tctl firmware untrust SHA256:3q2+7w...",
    "firmware push": "tctl firmware push gw-1.4.2.bundle --nodes board=rpi4 --canary 5%",
    "firmware stop": "tctl firmware stop 3f2a9c1e",
    "firmware status": "tctl firmware status 3f2a9c1e --format json",
    "audit": "tctl audit search --type session.start --since 1h",
    "audit search": "tctl audit search --user alice --since 1h --limit 20",
    "audit export": "tctl audit export --since 2026-11-01T00:00:00 > audit.jsonl",
}


def _add_data_dir(p: argparse.ArgumentParser, top: bool = False) -> None:
    """``--data-dir``: before the subcommand or after it (``tctl users ls --data-dir X``)."""
    default = os.environ.get("REMOTELER_HUB_DATA", DEFAULT_DATA_DIR) if top else argparse.SUPPRESS
    p.add_argument(
        "--data-dir",
        default=default,
        help=f"the hub's data directory (default: $REMOTELER_HUB_DATA, else {DEFAULT_DATA_DIR})",
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tctl", description="Administer a Remoteler hub")
    _add_data_dir(p, top=True)
    sub = p.add_subparsers(dest="group", required=True)

    def fmt(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--format", choices=["text", "json"], default="text")

    users = sub.add_parser("users", help="manage users").add_subparsers(dest="cmd", required=True)
    ua = users.add_parser("add", help="add a user (prints an invite unless a password is given)")
    ua.add_argument("name")
    ua.add_argument("--roles", default="access", help="comma-separated roles (default: access)")
    ua.add_argument("--logins", default="", help="comma-separated OS logins, e.g. pi,root")
    ua.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    ua.add_argument("--totp-secret", help="base32 TOTP seed (default: generated and printed)")
    fmt(ua)
    fmt(users.add_parser("ls", help="list users"))
    users.add_parser("rm", help="remove a user").add_argument("name")
    tctl_locks.register_user_unlock(users)

    tokens = sub.add_parser("tokens", help="manage join tokens").add_subparsers(
        dest="cmd", required=True
    )
    ta = tokens.add_parser("add", help="create a join token")
    ta.add_argument("--type", default="node", dest="kind")
    ta.add_argument("--ttl", default="1h")
    ta.add_argument("--labels", default="", help="labels the joining node gets, k=v,...")
    fmt(ta)
    fmt(tokens.add_parser("ls", help="list join tokens"))
    tokens.add_parser("rm", help="remove a join token").add_argument("token_id")

    nodes = sub.add_parser("nodes", help="manage nodes").add_subparsers(dest="cmd", required=True)
    fmt(nodes.add_parser("ls", help="list nodes"))
    nodes.add_parser("rm", help="remove a node (its identity stops working)").add_argument("name")
    nset = nodes.add_parser("set", help="change a node's settings (recording mode)")
    nset.add_argument("name", help="node name or id")
    nset.add_argument(
        "--recording",
        choices=["off", "proxy"],
        required=True,
        help="proxy: the hub terminates SSH and records; off: end to end (default)",
    )

    authp = sub.add_parser("auth", help="certificates").add_subparsers(dest="cmd", required=True)
    sign = authp.add_parser(
        "sign", help="write a user identity file, or a host certificate for a device's own sshd"
    )
    who = sign.add_mutually_exclusive_group(required=True)
    who.add_argument(
        "--user", help="user identity file for this user (default: none; --user or --host)"
    )
    who.add_argument(
        "--host", help="host certificate for this node name, needs --pubkey (default: none)"
    )
    sign.add_argument(
        "--pubkey", help="with --host: the sshd's Ed25519 host public key file (default: none)"
    )
    sign.add_argument("--ttl", help="validity (default: 12h for --user, 365d for --host)")
    sign.add_argument("-o", "--out", required=True, help="identity / certificate file path")
    export = authp.add_parser("export", help="print a CA for OpenSSH")
    export.add_argument("--type", choices=["user", "host"], required=True, dest="kind")
    tctl_rotate.add_rotate_parser(authp)

    create = sub.add_parser("create", help="create or update a resource from a TOML file")
    create.add_argument("-f", "--file", required=True)
    get = sub.add_parser("get", help="show resources")
    get.add_argument("kind", choices=["roles"])
    fmt(get)
    sub.add_parser("rm", help="remove a resource, e.g. role/NAME").add_argument("ref")

    fmt(sub.add_parser("status", help="hub address and CA pins"))
    LOCK_HANDLERS.update(tctl_locks.register(sub))
    LOCK_HANDLERS.update(tctl_firmware.register(sub))

    audit = sub.add_parser("audit", help="search the audit trail").add_subparsers(
        dest="cmd", required=True
    )
    search = audit.add_parser("search", help="events as a table or a JSON list")
    _audit_filters(search, default_limit=1000)
    fmt(search)
    _audit_filters(
        audit.add_parser("export", help="events as JSON lines (all of them unless --limit)"),
        default_limit=None,
    )
    return finish(p, "tctl", EXAMPLES, _add_data_dir)


def _audit_filters(parser: argparse.ArgumentParser, default_limit: int | None) -> None:
    parser.add_argument("--type", help="event type, e.g. session.start (default: any)")
    parser.add_argument(
        "--node", help="node name or id, 'hub' for the hub's own events (default: any)"
    )
    parser.add_argument("--user", help="Remoteler user (default: any)")
    parser.add_argument("--session", dest="session_id", help="session id (default: any)")
    parser.add_argument(
        "--since",
        help="from this time: ISO 8601 or a duration ago, 1h, 2d (default: the first event)",
    )
    parser.add_argument(
        "--until", help="before this time: ISO 8601 or a duration ago (default: no end)"
    )
    parser.add_argument(
        "--limit",
        type=int,
        default=default_limit,
        help=f"at most N events, see --order (default: {default_limit or 'all'})",
    )
    parser.add_argument(
        "--order",
        choices=["desc", "asc"],
        default="desc",
        help="which N --limit keeps: desc the newest, asc the oldest; printed oldest first",
    )


async def _backend(args: argparse.Namespace) -> Any:
    from hub.backend import SQLiteBackend
    from hub.datadir import DataDir
    from hub.seedcrypt import SeedCipher

    data = DataDir(Path(args.data_dir))
    data.cluster_name()  # clear error if this is not a hub data dir
    passphrase = data.ca_passphrase()  # the hub's: TOTP seeds are written encrypted with it
    return await SQLiteBackend.open(
        data.db_path, SeedCipher(passphrase) if passphrase is not None else None
    )


async def _auth(args: argparse.Namespace) -> Any:
    from hub.auth import AuthService
    from hub.datadir import DataDir

    data = DataDir(Path(args.data_dir))
    # the CAs first: a missing or wrong passphrase must not leave an open database,
    # whose thread would keep tctl from exiting after it printed the error
    cas = tctl_rotate.load_cas(args.data_dir)  # sign with the CAs of the rotation phase
    backend = await _backend(args)
    return AuthService(backend, cas.user.signer, cas.host.signer, data.cluster_name())


def _hub_addr(args: argparse.Namespace) -> str:
    from hub.datadir import DataDir

    path = DataDir(Path(args.data_dir)).addr_file
    return path.read_text().strip() if path.exists() else "not running"


async def cmd_users(args: argparse.Namespace) -> None:
    auth = await _auth(args)
    try:
        if args.cmd == "add":
            password = None
            if args.password_stdin:
                password = sys.stdin.readline().rstrip("\n")
            roles = [r for r in args.roles.split(",") if r]
            logins = [x for x in args.logins.split(",") if x]
            user, invite = await auth.add_user(args.name, roles, logins, password, args.totp_secret)
            from hub.secrets import totp_uri

            data: dict[str, Any] = {
                "user": user.name,
                "roles": list(user.roles),
                "logins": list(user.logins),
            }
            if invite:
                # The pin lets the invitee check the hub on first contact (no trust on first use).
                pin = tctl_rotate.load_cas(args.data_dir).host.server.pin()
                data["invite"] = invite
                data["invite_expires"] = int(time.time()) + 24 * 3600
                data["ca_pin"] = pin
                text = (
                    f"User {user.name!r} created. Invite (valid 24h, use once):\n"
                    f"  tsh login --proxy {_hub_addr(args)} --user {user.name} --invite {invite} "
                    f"--ca-pin {pin}"
                )
            else:
                assert user.totp_secret is not None
                data["totp_uri"] = totp_uri(user.totp_secret, user.name, auth.cluster)
                text = f"User {user.name!r} created.\nTOTP: {data['totp_uri']}"
            _emit(args, data, text)
        elif args.cmd == "ls":
            users = await auth.backend.list_users()
            rows = [[u.name, ",".join(u.roles), ",".join(u.logins)] for u in users]
            data_ls = [
                {"name": u.name, "roles": list(u.roles), "logins": list(u.logins)} for u in users
            ]
            _emit(args, data_ls, table(rows, ["User", "Roles", "Logins"]))
        elif args.cmd == "rm":
            if not await auth.backend.delete_user(args.name):
                raise UsageError(f"no user {args.name!r}; see 'tctl users ls'")
            print(f"User {args.name!r} removed.")
        elif args.cmd == "unlock":
            await tctl_locks.cmd_users_unlock(args, auth.backend)
    finally:
        await auth.backend.close()


async def cmd_tokens(args: argparse.Namespace) -> None:
    from remoteler.addr import parse_ttl

    auth = await _auth(args)
    try:
        if args.cmd == "add":
            ttl = parse_ttl(args.ttl)
            token, rec = await auth.add_token(args.kind, ttl, parse_labels(args.labels))
            pin = tctl_rotate.load_cas(args.data_dir).host.server.pin()  # what the hub serves
            hub = _hub_addr(args)
            data = {
                "token": token,
                "token_id": rec.token_id,
                "type": rec.kind,
                "expires": int(rec.expires),
                "labels": dict(rec.labels),
                "ca_pin": pin,
                "hub": hub,
            }
            text = (
                f"Join token (single use, expires {fmt_time(rec.expires)}): {token}\n"
                f"Start the agent on the device with (the token stays out of ps):\n"
                f"  REMOTELER_JOIN_TOKEN={token} edge-agent start --hub {hub} --ca-pin {pin} "
                f"--name NAME --labels k=v --data-dir /var/lib/remoteler-agent"
            )
            _emit(args, data, text)
        elif args.cmd == "ls":
            now = time.time()
            toks = await auth.backend.list_tokens()
            items = [
                {
                    "token_id": t.token_id,
                    "type": t.kind,
                    "labels": dict(t.labels),
                    "expires": int(t.expires),
                    "state": "used" if t.used_by else ("expired" if t.expires <= now else "valid"),
                }
                for t in toks
            ]
            rows = [
                [
                    i["token_id"],
                    i["type"],
                    format_labels(i["labels"]),
                    fmt_time(i["expires"]),
                    i["state"],
                ]
                for i in items
            ]
            _emit(args, items, table(rows, ["Token ID", "Type", "Labels", "Expires", "State"]))
        elif args.cmd == "rm":
            if not await auth.backend.delete_token(args.token_id):
                raise UsageError(f"no token with id {args.token_id!r}; see 'tctl tokens ls'")
            print(f"Token {args.token_id} removed.")
    finally:
        await auth.backend.close()


def _backlog(pending: int, oldest: float | None, now: float) -> str:
    """``0``, or ``12 (oldest 3m)``: events waiting on the device, from its heartbeat."""
    if not pending:
        return "0"
    if oldest is None:
        return str(pending)
    age = max(0, int(now - oldest))
    shown = f"{age}s" if age < 120 else f"{age // 60}m" if age < 7200 else f"{age // 3600}h"
    return f"{pending} (oldest {shown})"


async def cmd_nodes(args: argparse.Namespace) -> None:
    backend = await _backend(args)
    try:
        if args.cmd == "ls":
            nodes, note = as_seen(await backend.list_nodes(), Path(args.data_dir), time.time())
            if note:  # stored "online" flags outlived a hub that died (hub/alive.py)
                print(note, file=sys.stderr)
            items = [
                {
                    "id": n.id,
                    "name": n.name,
                    "labels": dict(n.labels),
                    "online": n.online,
                    "last_seen": n.last_seen,
                    "version": n.version,
                    "audit_pending": n.audit_pending,
                    "audit_oldest": n.audit_oldest,
                    "recording": n.recording,
                    "clock_skew": n.clock_skew,
                }
                for n in nodes
            ]
            now = time.time()
            rows = [
                [
                    n.name,
                    n.id,
                    format_labels(dict(n.labels)),
                    "online" if n.online else "offline",
                    fmt_time(n.last_seen),
                    _backlog(n.audit_pending, n.audit_oldest, now),
                    n.recording,
                    format_skew(n.clock_skew),
                ]
                for n in nodes
            ]
            headers = [
                *("Node", "ID", "Labels", "Status", "Last seen", "Audit backlog", "Recording"),
                "Clock",  # device minus hub: "+1 day" ahead, "-20 min" behind
            ]
            _emit(args, items, table(rows, headers))
        elif args.cmd == "rm":
            if not await backend.delete_node(args.name):
                raise UsageError(f"no node {args.name!r}; see 'tctl nodes ls'")
            print(f"Node {args.name!r} removed; its agent must join again with a new token.")
        elif args.cmd == "set":
            await _set_recording(args, backend)
    finally:
        await backend.close()


async def _set_recording(args: argparse.Namespace, backend: Any) -> None:
    """``tctl nodes set NAME --recording proxy|off``: applies to the next connection."""
    from remoteler.audit.events import EventType

    node = await backend.set_node_recording(args.name, args.recording)
    if node is None:
        raise UsageError(f"no node {args.name!r}; see 'tctl nodes ls'")
    await _record_role_event(
        args, EventType.NODE_UPDATED, name=node.name, node_id=node.id, recording=node.recording
    )
    how = (
        "the hub records its sessions (it sees them in plaintext)"
        if node.recording == "proxy"
        else "sessions are end to end again"
    )
    print(
        f"Node {node.name!r}: recording {node.recording}; {how}. "
        "Open connections in the other mode are ended."
    )


async def cmd_auth(args: argparse.Namespace) -> None:
    from hub.datadir import DataDir
    from remoteler.addr import parse_ttl

    if args.cmd == "export":
        cluster = DataDir(Path(args.data_dir)).cluster_name()
        for ca in tctl_rotate.load_cas(args.data_dir).of(args.kind).trusted:  # 2 while rotating
            # Host CAs: the pattern 'tsh config' writes, so the CA vouches for this
            # cluster's node names (NODE.<cluster>) only, never for any host at all.
            line = ca.known_hosts_line(f"*.{cluster}") if args.kind == "host" else None
            print(line or ca.trusted_user_ca_line())
        return
    if args.cmd == "rotate":
        _emit(args, *await tctl_rotate.cmd_rotate(args))
        return
    if args.host:
        await _sign_host(args)
        return
    from hub.dbcheck import open_audit_store

    auth = await _auth(args)
    try:
        auth.audit = await open_audit_store(Path(args.data_dir))  # cert.create
        from remoteler.ca import generate_private_key, public_key_to_openssh
        from remoteler.identity import write_identity_file

        user = await auth.backend.get_user(args.user)
        if user is None:
            raise UsageError(f"no user {args.user!r}; create it with 'tctl users add'")
        key = generate_private_key()
        issued = await auth.issue_user_certs(
            user, public_key_to_openssh(key.public_key()), parse_ttl(args.ttl or "12h")
        )
        files = write_identity_file(
            Path(args.out),
            key,
            issued.ssh_cert,
            issued.tls_cert.encode(),
            b"".join(tctl_rotate.load_cas(args.data_dir).host.trusted_pems()),
        )
        print(f"Identity for {user.name!r} valid until {fmt_time(issued.expires)} written to:")
        for f in files:
            print(f"  {f}")
    finally:
        await auth.backend.close()
        if auth.audit is not None:
            await auth.audit.close()


async def _sign_host(args: argparse.Namespace) -> None:
    """``tctl auth sign --host NAME --pubkey KEY.pub``: a host cert for a device's own sshd.

    Principals as for joined nodes (hub.auth.host_principals, without a node id):
    ``NAME`` for ``tsh ssh`` and ``NAME.<cluster>`` for OpenSSH through ``tsh config``.
    """
    from hub.auth import check_name
    from hub.datadir import DataDir
    from remoteler.addr import parse_ttl
    from remoteler.audit.events import EventType
    from remoteler.ca import CAError, public_key_from_openssh

    if not args.pubkey:
        raise UsageError("--host needs --pubkey, e.g. /etc/ssh/ssh_host_ed25519_key.pub")
    name = check_name("node", args.host)
    out = Path(args.out)
    pubkey = Path(args.pubkey)
    # -o ssh_host_ed25519_key (a slip for ...-cert.pub) would destroy the device's host key.
    keys = {pubkey.resolve(), pubkey.with_suffix("").resolve() if pubkey.suffix == ".pub" else None}
    if out.resolve() in keys:
        raise UsageError(
            f"-o {args.out} would overwrite the host key; write the certificate next to it, "
            f"e.g. -o {str(pubkey).removesuffix('.pub')}-cert.pub"
        )
    cluster = DataDir(Path(args.data_dir)).cluster_name()
    try:
        pub = public_key_from_openssh(pubkey.read_text())
    except OSError as exc:
        raise UsageError(f"cannot read {args.pubkey}: {exc.strerror}; give a .pub file") from None
    except (CAError, UnicodeDecodeError):
        raise UsageError(
            f"{args.pubkey} is not an Ed25519 public key; sign the sshd's "
            "ssh_host_ed25519_key.pub (ssh-keygen -t ed25519 makes one)"
        ) from None
    ttl = parse_ttl(args.ttl or "365d")
    principals = [name, f"{name}.{cluster}"]
    host_ca = tctl_rotate.load_cas(args.data_dir).host.server  # as for nodes' host certs
    cert = host_ca.sign_ssh_host_cert(pub, key_id=name, principals=principals, ttl_seconds=ttl)
    await _record_role_event(
        args, EventType.CERT_CREATE, ttl=ttl, logins=[], host=name, principals=principals
    )
    try:
        out.write_text(cert.rstrip("\n") + "\n")
    except OSError as exc:
        raise UsageError(f"cannot write {out}: {exc.strerror}") from None
    valid = fmt_time(int(time.time()) + ttl)
    print(f"Host certificate for {', '.join(principals)} valid until {valid} written to {out}")


async def cmd_status(args: argparse.Namespace) -> None:
    from hub.datadir import DataDir

    data = DataDir(Path(args.data_dir))
    cluster = data.cluster_name()
    backend = await _backend(args)
    try:
        nodes, _ = as_seen(await backend.list_nodes(), Path(args.data_dir), time.time())
    finally:
        await backend.close()
    info = {
        "cluster": cluster,
        "hub": _hub_addr(args),
        "nodes": len(nodes),
        "nodes_online": sum(1 for n in nodes if n.online),
        # ca_pin, user_ca_pin, rotation, nodes_updated
        **await tctl_rotate.status_info(args.data_dir, [n.id for n in nodes]),
    }
    text = "\n".join(
        [
            f"Cluster:  {cluster}",
            f"Hub:      {info['hub']}",
            f"CA pin:   {info['ca_pin']}",
            f"Nodes:    {info['nodes']} ({info['nodes_online']} online)",
            *tctl_rotate.status_lines(info),
        ]
    )
    _emit(args, info, text)


async def _record_role_event(args: argparse.Namespace, type: Any, **fields: Any) -> None:
    """``role.created`` / ``role.deleted`` in the hub's audit store; user = who ran tctl."""
    import getpass

    from hub.dbcheck import open_audit_store
    from remoteler.audit.events import HUB_NODE, make_event

    store = await open_audit_store(Path(args.data_dir))
    try:
        try:
            by = getpass.getuser()
        except (KeyError, OSError):
            by = str(os.geteuid())
        await store.record(make_event(type, node=HUB_NODE, **fields, by=f"tctl:{by}"))
    finally:
        await store.close()


async def cmd_create(args: argparse.Namespace) -> None:
    from hub.roles import load_role_file
    from remoteler.audit.events import EventType

    role = load_role_file(Path(args.file))
    backend = await _backend(args)
    try:
        existed = await backend.get_role(role.name) is not None
        await backend.put_role(role)
    finally:
        await backend.close()
    await _record_role_event(
        args, EventType.ROLE_CREATED, name=role.name, spec=role.to_dict(), updated=existed
    )
    print(f"Role {role.name!r} {'updated' if existed else 'created'}.")


def _selector_text(selector: Any) -> str:
    return format_labels({k: "|".join(v) for k, v in selector.items()})


async def cmd_get(args: argparse.Namespace) -> None:
    backend = await _backend(args)
    try:
        roles = await backend.list_roles()
    finally:
        await backend.close()
    rows = []
    for r in roles:
        deny = [*r.deny_logins, _selector_text(r.deny_node_labels)]
        rows.append(
            [
                r.name,
                ",".join(r.logins),
                _selector_text(r.node_labels),
                " ".join(x for x in deny if x) or "-",
                ",".join(sorted(r.grants() - r.vetoes())) or "-",
                str(r.max_session_ttl),
            ]
        )
    _emit(
        args,
        [r.to_dict() for r in roles],
        table(rows, ["Role", "Logins", "Node labels", "Deny", "Permissions", "Max TTL (s)"]),
    )


async def cmd_rm(args: argparse.Namespace) -> None:
    from remoteler.access import PRESET_ROLES
    from remoteler.audit.events import EventType

    kind, _, name = args.ref.partition("/")
    if kind != "role" or not name:
        raise UsageError(f"cannot remove {args.ref!r}: use role/NAME")
    if name in {r.name for r in PRESET_ROLES}:
        raise UsageError(
            f"role {name!r} is a preset and comes back at the next start; "
            "change it with 'tctl create -f' instead"
        )
    backend = await _backend(args)
    try:
        if not await backend.delete_role(name):
            raise UsageError(f"no role {name!r}; see 'tctl get roles'")
        users = [u.name for u in await backend.list_users() if name in u.roles]
    finally:
        await backend.close()
    await _record_role_event(args, EventType.ROLE_DELETED, name=name)
    print(f"Role {name!r} removed.")
    if users:  # a missing role grants (and denies) nothing; their next login shows it
        more = " and others" if len(users) > 5 else ""
        print(
            f"It no longer applies to {', '.join(users[:5])}{more} at the hub; certificates "
            "they hold keep it on directly reached devices until they expire.",
            file=sys.stderr,
        )


def parse_when(text: str, now: float | None = None) -> float:
    """``2026-11-25T10:00:00`` (local time unless it has an offset) or ``1h`` meaning 1 h ago."""
    from datetime import datetime

    from remoteler.addr import parse_ttl

    if text and text.strip()[-1:] in "smhd" and text.strip()[:1].isdigit():
        return (time.time() if now is None else now) - parse_ttl(text)
    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise UsageError(
            f"bad time {text!r}: use ISO 8601 such as 2026-11-25T10:00:00 or a duration such as 1h"
        ) from None


def audit_json(event: AuditEvent) -> dict[str, Any]:
    """``AuditEvent.to_wire()`` made JSON-safe: a bytes field ``k`` becomes ``k_b64``."""
    wire = event.to_wire()
    fields: dict[str, Any] = {}
    for key, value in wire["fields"].items():
        if isinstance(value, bytes):
            fields[key + "_b64"] = base64.b64encode(value).decode()
        else:
            fields[key] = value
    wire["fields"] = fields
    return wire


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):  # bytes nested below a field: base64 in place
        return base64.b64encode(value).decode()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def _summary(fields: Any, width: int = 60) -> str:
    parts = []
    for key, value in fields.items():
        if isinstance(value, bytes):
            text = f"<{len(value)} bytes>"
        elif isinstance(value, str):
            text = value if len(value) <= 40 else value[:39] + "…"
        else:
            text = json.dumps(value, default=_json_default)
        parts.append(f"{key}={text}")
    line = " ".join(parts)
    return line if len(line) <= width else line[: width - 1] + "…"


async def _session_arg(store: Any, session_id: str | None) -> str | None:
    """``--session``: a whole id, or the start of one as the table shows (8 characters)."""
    from hub.audit_store import MAX_CANDIDATES, MIN_SESSION_PREFIX

    if session_id is None or len(session_id) < MIN_SESSION_PREFIX:
        return session_id
    found = await store.session_ids(session_id, None, MAX_CANDIDATES + 1)
    if not found or found[0] == session_id:  # sorted: an exact id comes first
        return session_id
    if len(found) > 1:
        more = ", ..." if len(found) > MAX_CANDIDATES else ""
        raise UsageError(
            f"--session {session_id[:64]!r} matches several sessions "
            f"({', '.join(found[:MAX_CANDIDATES])}{more}); give more characters"
        )
    return str(found[0])


async def cmd_audit(args: argparse.Namespace) -> None:
    from hub.dbcheck import open_audit_store

    if args.limit is not None and args.limit < 1:
        raise UsageError("--limit must be at least 1")
    since = parse_when(args.since) if args.since else None
    until = parse_when(args.until) if args.until else None
    backend = await _backend(args)
    try:
        names = {n.id: n.name for n in await backend.list_nodes()}
        node = args.node
        if node is not None and node not in names:
            found = await backend.get_node(node)
            node = found.id if found else node  # a removed node's id or "hub" still works
    finally:
        await backend.close()
    newest = args.limit is not None and args.order == "desc"
    store = await open_audit_store(Path(args.data_dir))
    try:
        session_id = await _session_arg(store, args.session_id)
        events = store.iter_search(
            type=args.type,
            node=node,
            user=args.user,
            session_id=session_id,
            since=since,
            until=until,
            limit=args.limit,
            newest_first=newest,
        )
        if args.cmd == "export" and not newest:
            async for event in events:
                print(json.dumps(audit_json(event), sort_keys=True, default=_json_default))
            return
        found_events = [e async for e in events]  # at most --limit when newest first
        if newest:
            found_events.reverse()  # the newest N, printed oldest first
        if args.cmd == "export":
            for event in found_events:
                print(json.dumps(audit_json(event), sort_keys=True, default=_json_default))
            return
    finally:
        await store.close()
    if args.format == "json":
        print(
            json.dumps(
                [audit_json(e) for e in found_events],
                indent=2,
                sort_keys=True,
                default=_json_default,
            )
        )
        return
    rows = [
        [
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.time)),
            e.type,
            names.get(e.node, e.node),
            e.user,
            e.login,
            e.session_id[:8],
            _summary(e.fields),
        ]
        for e in found_events
    ]
    print(table(rows, ["Time", "Type", "Node", "User", "Login", "Session", "Fields"]))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = {
        "users": cmd_users,
        "tokens": cmd_tokens,
        "nodes": cmd_nodes,
        "auth": cmd_auth,
        "status": cmd_status,
        "create": cmd_create,
        "get": cmd_get,
        "rm": cmd_rm,
        "audit": cmd_audit,
        **LOCK_HANDLERS,
    }[args.group]
    try:
        require_hub_extra()
        asyncio.run(handler(args))
    except RemotelerError as err:
        print(f"tctl: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # 'tctl ... | head': the reader had enough, nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error at exit
        return 141  # 128 + SIGPIPE, what a shell shows for a program killed by it
    except sqlite3.DatabaseError as err:  # a damaged file: name it (hub/dbcheck.py)
        from hub.dbcheck import diagnose

        print(f"tctl: {diagnose(Path(args.data_dir), err)}", file=sys.stderr)
        return 1
    except Exception as err:  # unforeseen: still one line (REMOTELER_DEBUG=1: the traceback)
        if os.environ.get("REMOTELER_DEBUG") == "1":
            raise
        print(
            f"tctl: unexpected {type(err).__name__}: {err}; please report it "
            "(REMOTELER_DEBUG=1 shows where)",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
