"""``tctl``: administer a hub through its RPC, as a client with an admin identity.

On the hub host it finds the hub from its data dir (``DATA/hub.addr``,
``DATA/admin-identity``); elsewhere ``--hub HOST:PORT -i FILE``. It never opens
the hub's database or CA keys (tctl/hubclient.py). JSON output (``--format
json``) is stable: keys are only ever added. See docs/tctl.md for every shape.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from remoteler.addr import format_labels
from remoteler.admin import AdminMethod
from remoteler.audit.events import AuditEvent
from remoteler.clihelp import finish
from remoteler.clockskew import format_skew
from remoteler.errors import RemotelerError, UsageError
from remoteler.textfmt import fmt_time, table
from tctl import connectors as tctl_connectors
from tctl import firmware as tctl_firmware
from tctl import locks as tctl_locks
from tctl import rotate as tctl_rotate
from tctl.hubclient import HubClient, find_target

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
    "status": "tctl status --data-dir /var/lib/remoteler-hub\n"
    "tctl --hub hub.example.com:3080 -i ~/alice-admin status",
    "cluster": "tctl cluster set --agent-connections 2",
    "cluster set": "tctl cluster set --agent-connections 3\n"
    "tctl cluster set --agent-connections 0   # back to the default",
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
    """The global flags, before the subcommand or after it (``tctl users ls --data-dir X``)."""
    default = os.environ.get("REMOTELER_HUB_DATA", DEFAULT_DATA_DIR) if top else argparse.SUPPRESS
    p.add_argument(
        "--data-dir",
        default=default,
        help="on the hub host: the hub's data directory, where tctl finds its address "
        f"and admin identity (default: $REMOTELER_HUB_DATA, else {DEFAULT_DATA_DIR})",
    )
    p.add_argument(
        "--hub",
        default=None if top else argparse.SUPPRESS,
        help="HOST:PORT of the hub, from another machine; needs -i (default: the hub of "
        "--data-dir)",
    )
    p.add_argument(
        "-i",
        "--identity",
        default=None if top else argparse.SUPPRESS,
        help="identity file from 'tctl auth sign' whose roles have the admin permission "
        "(default: DATA/admin-identity, the hub's own)",
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
    get.add_argument("kind", choices=["roles", "connectors"])
    fmt(get)
    sub.add_parser("rm", help="remove a resource: role/NAME or connector/NAME").add_argument("ref")

    fmt(sub.add_parser("status", help="hub address, CA pins and the cluster's hubs"))
    cluster = sub.add_parser("cluster", help="settings of the cluster of hubs").add_subparsers(
        dest="cmd", required=True
    )
    cluster_set = cluster.add_parser("set", help="change a cluster setting (docs/cluster.md)")
    cluster_set.add_argument(
        "--agent-connections",
        type=int,
        required=True,
        metavar="N",
        help="tunnels each agent keeps to distinct hubs, 1-8; 0 for the default "
        "(2 with two hubs or more, else 1)",
    )
    fmt(cluster_set)
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


def _backlog(pending: int, oldest: float | None, now: float) -> str:
    """``0``, or ``12 (oldest 3m)``: events waiting on the device, from its heartbeat."""
    if not pending:
        return "0"
    if oldest is None:
        return str(pending)
    age = max(0, int(now - oldest))
    shown = f"{age}s" if age < 120 else f"{age // 60}m" if age < 7200 else f"{age // 3600}h"
    return f"{pending} (oldest {shown})"


async def cmd_users(args: argparse.Namespace, hub: HubClient) -> None:
    if args.cmd == "add":
        password = None
        if args.password_stdin:
            password = sys.stdin.readline().rstrip("\n")
        out = await hub.call(
            AdminMethod.USERS_ADD,
            name=args.name,
            roles=args.roles,
            logins=args.logins,
            password=password,
            totp_secret=args.totp_secret,
        )
        data = out["data"]
        if "invite" in data:
            text = (
                f"User {data['user']!r} created. Invite (valid 24h, use once):\n"
                f"  tsh login --proxy {out['hub']} --user {data['user']} "
                f"--invite {data['invite']} --ca-pin {data['ca_pin']}"
            )
        else:
            text = f"User {data['user']!r} created.\nTOTP: {data['totp_uri']}"
        _emit(args, data, text)
    elif args.cmd == "ls":
        users = await hub.call(AdminMethod.USERS_LS)
        rows = [
            [
                u["name"],
                ",".join(u["roles"]),
                ",".join(u["logins"]) or "-",
                u.get("connector") or "local",
                fmt_time(u["expires"]) if u.get("expires") else "-",
            ]
            for u in users
        ]
        _emit(args, users, table(rows, ["User", "Roles", "Logins", "Connector", "Expires"]))
    elif args.cmd == "rm":
        await hub.call(AdminMethod.USERS_RM, name=args.name)
        print(f"User {args.name!r} removed.")
    elif args.cmd == "unlock":
        await tctl_locks.cmd_users_unlock(args, hub)


async def cmd_tokens(args: argparse.Namespace, hub: HubClient) -> None:
    if args.cmd == "add":
        data = await hub.call(
            AdminMethod.TOKENS_ADD, kind=args.kind, ttl=args.ttl, labels=args.labels
        )
        token, pin = data["token"], data["ca_pin"]
        text = (
            f"Join token (single use, expires {fmt_time(data['expires'])}): {token}\n"
            f"Start the agent on the device with (the token stays out of ps):\n"
            f"  REMOTELER_JOIN_TOKEN={token} edge-agent start --hub {data['hub']} --ca-pin {pin} "
            f"--name NAME --labels k=v --data-dir /var/lib/remoteler-agent"
        )
        _emit(args, data, text)
    elif args.cmd == "ls":
        items = await hub.call(AdminMethod.TOKENS_LS)
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
        await hub.call(AdminMethod.TOKENS_RM, token_id=args.token_id)
        print(f"Token {args.token_id} removed.")


async def cmd_nodes(args: argparse.Namespace, hub: HubClient) -> None:
    if args.cmd == "ls":
        items = await hub.call(AdminMethod.NODES_LS)
        now = time.time()
        rows = [
            [
                n["name"],
                n["id"],
                format_labels(n["labels"]),
                "online" if n["online"] else "offline",
                fmt_time(n["last_seen"]),
                _backlog(n["audit_pending"], n["audit_oldest"], now),
                n["recording"],
                format_skew(n["clock_skew"]),
                ",".join(n.get("hubs") or []) or "-",
            ]
            for n in items
        ]
        headers = [
            *("Node", "ID", "Labels", "Status", "Last seen", "Audit backlog", "Recording"),
            "Clock",  # device minus hub: "+1 day" ahead, "-20 min" behind
            "Hubs",  # the hubs holding its tunnels (docs/cluster.md)
        ]
        _emit(args, items, table(rows, headers))
    elif args.cmd == "rm":
        await hub.call(AdminMethod.NODES_RM, name=args.name)
        print(f"Node {args.name!r} removed; its agent must join again with a new token.")
    elif args.cmd == "set":
        out = await hub.call(AdminMethod.NODES_SET, name=args.name, recording=args.recording)
        how = (
            "the hub records its sessions (it sees them in plaintext)"
            if out["recording"] == "proxy"
            else "sessions are end to end again"
        )
        print(
            f"Node {out['node']!r}: recording {out['recording']}; {how}. "
            "Open connections in the other mode are ended."
        )


async def cmd_auth(args: argparse.Namespace, hub: HubClient) -> None:
    if args.cmd == "export":
        out = await hub.call(AdminMethod.AUTH_EXPORT, kind=args.kind)
        for line in out["lines"]:  # 2 while rotating
            print(line)
        return
    if args.cmd == "rotate":
        _emit(args, *await tctl_rotate.cmd_rotate(args, hub))
        return
    if args.host:
        await _sign_host(args, hub)
        return
    from remoteler.ca import generate_private_key, public_key_to_openssh
    from remoteler.identity import write_identity_file

    key = generate_private_key()  # made here: the private key never travels
    out = await hub.call(
        AdminMethod.AUTH_SIGN_USER,
        user=args.user,
        ttl=args.ttl,
        public_key=public_key_to_openssh(key.public_key()),
    )
    try:
        files = write_identity_file(
            Path(args.out),
            key,
            out["ssh_cert"],
            out["tls_cert"].encode(),
            out["host_ca_pem"].encode(),
        )
    except OSError as exc:
        raise UsageError(f"cannot write {args.out}: {exc.strerror}") from None
    print(f"Identity for {out['user']!r} valid until {fmt_time(out['expires'])} written to:")
    for f in files:
        print(f"  {f}")


async def _sign_host(args: argparse.Namespace, hub: HubClient) -> None:
    """``tctl auth sign --host NAME --pubkey KEY.pub``: a host cert for a device's own sshd."""
    if not args.pubkey:
        raise UsageError("--host needs --pubkey, e.g. /etc/ssh/ssh_host_ed25519_key.pub")
    out = Path(args.out)
    pubkey = Path(args.pubkey)
    # -o ssh_host_ed25519_key (a slip for ...-cert.pub) would destroy the device's host key.
    keys = {pubkey.resolve(), pubkey.with_suffix("").resolve() if pubkey.suffix == ".pub" else None}
    if out.resolve() in keys:
        raise UsageError(
            f"-o {args.out} would overwrite the host key; write the certificate next to it, "
            f"e.g. -o {str(pubkey).removesuffix('.pub')}-cert.pub"
        )
    try:
        text = pubkey.read_text()
    except OSError as exc:
        raise UsageError(f"cannot read {args.pubkey}: {exc.strerror}; give a .pub file") from None
    except UnicodeDecodeError:
        text = ""  # the hub names it as not an Ed25519 public key
    signed = await hub.call(
        AdminMethod.AUTH_SIGN_HOST,
        host=args.host,
        public_key=text,
        pubkey_file=args.pubkey,
        ttl=args.ttl,
    )
    try:
        out.write_text(signed["cert"].rstrip("\n") + "\n")
    except OSError as exc:
        raise UsageError(f"cannot write {out}: {exc.strerror}") from None
    valid = fmt_time(signed["expires"])
    print(
        f"Host certificate for {', '.join(signed['principals'])} valid until {valid} "
        f"written to {out}"
    )


async def cmd_status(args: argparse.Namespace, hub: HubClient) -> None:
    info = await hub.call(AdminMethod.STATUS)
    text = "\n".join(
        [
            f"Cluster:  {info['cluster']}",
            f"Hub:      {info['hub']}",
            f"CA pin:   {info['ca_pin']}",
            f"Nodes:    {info['nodes']} ({info['nodes_online']} online)",
            *tctl_rotate.status_lines(info),
            *_hub_lines(info),
        ]
    )
    _emit(args, info, text)


def _hub_lines(info: dict[str, Any]) -> list[str]:
    """The cluster's hubs (docs/cluster.md): one row each, this one marked."""
    hubs = info.get("hubs") or []
    rows = [
        [
            h["id"] + (" *" if h["id"] == info.get("hub_id") else ""),
            h["addr"],
            h["peer_addr"] or "-",
            str(h["agents"]),
            f"{h['lease_age']:.0f}s",
        ]
        for h in hubs
    ]
    headers = ["Hub", "Address", "Peer address", "Agents", "Lease age"]
    count = info.get("agent_connections")
    how = "set by 'tctl cluster set'" if info.get("agent_connections_set") else "default"
    return [
        f"Agent tunnels: {count} per agent ({how})",
        "",
        f"Hubs:     {len(hubs)} (* = this one)",
        table(rows, headers),
    ]


async def cmd_cluster(args: argparse.Namespace, hub: HubClient) -> None:
    out = await hub.call(AdminMethod.CLUSTER_SET, connection_count=args.agent_connections)
    count = out["agent_connection_count"]
    text = (
        f"Agents keep {count} tunnel(s) to distinct hubs; hubs tell them within 5 s."
        if count
        else "Agents keep the default number of tunnels (2 with two hubs or more, else 1)."
    )
    _emit(args, out, text)


async def cmd_create(args: argparse.Namespace, hub: HubClient) -> None:
    path = Path(args.file)
    try:
        text = path.read_text(encoding="utf-8")  # TOML is UTF-8
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path} is not UTF-8 text; save it as UTF-8 TOML") from None
    doc = tctl_connectors.read_doc(path, text)
    if doc.get("kind") in (*tctl_connectors.CONNECTOR_KINDS, "auth_preference"):
        await tctl_connectors.create(hub, path, doc)
        return
    out = await hub.call(AdminMethod.ROLES_PUT, text=text, file=str(path))
    print(f"Role {out['role']!r} {'updated' if out['updated'] else 'created'}.")


def _selector_text(selector: Any) -> str:
    return format_labels({k: "|".join(v) for k, v in selector.items()})


async def cmd_get(args: argparse.Namespace, hub: HubClient) -> None:
    from remoteler.access import Role

    if args.kind == "connectors":
        await tctl_connectors.get(args, hub)
        return
    specs = await hub.call(AdminMethod.ROLES_LS)
    rows = []
    for spec in specs:
        r = Role.from_dict(spec)
        deny = [*r.deny_logins, _selector_text(r.deny_node_labels)]
        hub_side = {"admin"} if r.permissions.get("admin") else set()
        granted = sorted((r.grants() - r.vetoes()) | hub_side)
        rows.append(
            [
                r.name,
                ",".join(r.logins),
                _selector_text(r.node_labels),
                " ".join(x for x in deny if x) or "-",
                ",".join(granted) or "-",
                str(r.max_session_ttl),
            ]
        )
    _emit(
        args,
        specs,
        table(rows, ["Role", "Logins", "Node labels", "Deny", "Permissions", "Max TTL (s)"]),
    )


async def cmd_rm(args: argparse.Namespace, hub: HubClient) -> None:
    kind, _, name = args.ref.partition("/")
    if kind == "connector" and name:
        await hub.call(AdminMethod.CONNECTORS_RM, name=name)
        print(f"Connector {name!r} removed.")
        return
    if kind != "role" or not name:
        raise UsageError(f"cannot remove {args.ref!r}: use role/NAME or connector/NAME")
    out = await hub.call(AdminMethod.ROLES_RM, name=name)
    print(f"Role {name!r} removed.")
    users = out["users"]
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


def audit_json(event: AuditEvent | dict[str, Any]) -> dict[str, Any]:
    """``AuditEvent.to_wire()`` made JSON-safe: a bytes field ``k`` becomes ``k_b64``."""
    wire = dict(event) if isinstance(event, dict) else event.to_wire()
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


async def _audit_pages(args: argparse.Namespace, hub: HubClient, names: dict[str, str]) -> Any:
    """Every event the filters match, a page per call (hub/admin/audit.py)."""
    since = parse_when(args.since) if args.since else None
    until = parse_when(args.until) if args.until else None
    left = args.limit
    after = None
    while True:
        page = await hub.call(
            AdminMethod.AUDIT_SEARCH,
            type=args.type,
            node=args.node,
            user=args.user,
            session_id=args.session_id,
            since=since,
            until=until,
            limit=left,
            order="desc" if args.limit is not None and args.order == "desc" else "asc",
            after=after,
        )
        names.update(page["names"])
        for wire in page["events"]:  # as the hub stored it: shown, not judged
            yield wire
        if left is not None:
            left -= len(page["events"])
        after = page["next"]
        if after is None or (left is not None and left <= 0):
            return


async def cmd_audit(args: argparse.Namespace, hub: HubClient) -> None:
    if args.limit is not None and args.limit < 1:
        raise UsageError("--limit must be at least 1")
    newest = args.limit is not None and args.order == "desc"
    names: dict[str, str] = {}
    events = _audit_pages(args, hub, names)
    if args.cmd == "export" and not newest:
        async for event in events:  # streamed: an export of any size, a page at a time
            print(json.dumps(audit_json(event), sort_keys=True, default=_json_default))
        return
    found_events = [e async for e in events]  # at most --limit when newest first
    if newest:
        found_events.reverse()  # the newest N, printed oldest first
    if args.cmd == "export":
        for event in found_events:
            print(json.dumps(audit_json(event), sort_keys=True, default=_json_default))
        return
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
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["time"])),
            e["type"],
            names.get(e["node"], e["node"]),
            e["user"],
            e["login"],
            e["session"][:8],
            _summary(e["fields"]),
        ]
        for e in found_events
    ]
    print(table(rows, ["Time", "Type", "Node", "User", "Login", "Session", "Fields"]))


async def _run(handler: Any, args: argparse.Namespace) -> None:
    hub = HubClient(find_target(args.data_dir, args.hub, args.identity))
    try:
        await handler(args, hub)
    finally:
        await hub.close()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = {
        "users": cmd_users,
        "tokens": cmd_tokens,
        "nodes": cmd_nodes,
        "auth": cmd_auth,
        "status": cmd_status,
        "cluster": cmd_cluster,
        "create": cmd_create,
        "get": cmd_get,
        "rm": cmd_rm,
        "audit": cmd_audit,
        **LOCK_HANDLERS,
    }[args.group]
    try:
        asyncio.run(_run(handler, args))
    except RemotelerError as err:
        print(f"tctl: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # 'tctl ... | head': the reader had enough, nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error at exit
        return 141  # 128 + SIGPIPE, what a shell shows for a program killed by it
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
