"""``tctl lock``, ``tctl locks ls``, ``tctl unlock`` and ``tctl users unlock``.

They write the hub's database directly; the running hub sees a change within a
second (hub/locks.py) and tells the agents.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from remoteler.errors import UsageError
from remoteler.textfmt import fmt_time, table

Handler = Callable[[argparse.Namespace], Coroutine[Any, Any, None]]


def register(sub: Any) -> dict[str, Handler]:
    """Add the lock commands to tctl's subparsers; return their handlers by group."""
    lock = sub.add_parser(
        "lock", help="lock a user, node or login: refuse new sessions, end open ones"
    )
    target = lock.add_mutually_exclusive_group(required=True)
    target.add_argument(
        "--user", help="Remoteler user to lock (default: none; give one of --user/--node/--login)"
    )
    target.add_argument("--node", help="node name or id to lock (default: none)")
    target.add_argument("--login", help="OS login to lock on every node (default: none)")
    lock.add_argument("--ttl", help="lift the lock after this long (e.g. 30m, 8h); default never")
    lock.add_argument("--message", default="", help="shown to the locked user")
    lock.add_argument("--format", choices=["text", "json"], default="text")
    locks = sub.add_parser("locks", help="list locks").add_subparsers(dest="cmd", required=True)
    locks.add_parser("ls", help="locks in force").add_argument(
        "--format", choices=["text", "json"], default="text"
    )
    sub.add_parser("unlock", help="remove a lock by its id").add_argument("lock_id")
    return {"lock": cmd_lock, "locks": cmd_locks, "unlock": cmd_unlock}


def register_user_unlock(users: Any) -> None:
    """``tctl users unlock NAME``: lift a lockout after failed logins."""
    users.add_parser("unlock", help="lift the lockout after repeated failed logins").add_argument(
        "name"
    )


async def _open(args: argparse.Namespace) -> tuple[Any, Any]:
    from hub.audit_store import AuditStore, audit_db_path
    from hub.backend import SQLiteBackend
    from hub.datadir import DataDir

    data = DataDir(Path(args.data_dir))
    data.cluster_name()  # clear error if this is not a hub data dir
    backend = await SQLiteBackend.open(data.db_path)
    try:
        audit = await AuditStore.open(audit_db_path(data.path))
    except BaseException:
        await backend.close()
        raise
    return backend, audit


def _item(lock: Any) -> dict[str, Any]:
    return {
        "id": lock.id,
        "kind": lock.kind,
        "target": lock.target,
        "message": lock.message,
        "created": int(lock.created),
        "expires": None if lock.expires is None else int(lock.expires),
    }


async def cmd_lock(args: argparse.Namespace) -> None:
    from hub.locks import new_lock_id
    from remoteler.addr import parse_ttl
    from remoteler.audit.events import HUB_NODE, EventType, make_event
    from remoteler.locks import KINDS, MAX_MESSAGE, Lock, LockKind

    kind: LockKind = next(k for k in KINDS if getattr(args, k) is not None)
    target = getattr(args, kind)
    if not target.strip():
        raise UsageError(f"give a {kind} name to lock")
    if len(args.message) > MAX_MESSAGE:
        raise UsageError(f"--message is too long: at most {MAX_MESSAGE} characters")
    now = time.time()
    expires = now + parse_ttl(args.ttl) if args.ttl else None
    backend, audit = await _open(args)
    try:
        if kind == "node":
            node = await backend.get_node(target)
            if node is None:
                raise UsageError(f"no node {target!r}; see 'tctl nodes ls'")
            target = node.name
        lock = Lock(new_lock_id(), kind, target, args.message, now, expires, "tctl")
        await backend.add_lock(lock)
        await audit.record(
            make_event(
                EventType.LOCK_CREATED,
                node=HUB_NODE,
                user=target if kind == "user" else "",
                login=target if kind == "login" else "",
                now=now,
                lock_id=lock.id,
                kind=kind,
                target=target,
                message=lock.message,
                expires=lock.expires,
            )
        )
    finally:
        await backend.close()
        await audit.close()
    until = f"until {fmt_time(expires)}" if expires is not None else "until 'tctl unlock'"
    text = f"Locked {kind} {target!r} ({until}). Lock id: {lock.id}"
    if args.format == "json":
        print(json.dumps(_item(lock), indent=2, sort_keys=True))
    else:
        print(text)


async def cmd_locks(args: argparse.Namespace) -> None:
    backend, audit = await _open(args)
    try:
        locks = await backend.list_locks(time.time())
    finally:
        await backend.close()
        await audit.close()
    items = [_item(lock) for lock in locks]
    if args.format == "json":
        print(json.dumps(items, indent=2, sort_keys=True))
        return
    rows = [
        [
            i["id"],
            i["kind"],
            i["target"],
            fmt_time(i["created"]),
            "never" if i["expires"] is None else fmt_time(i["expires"]),
            i["message"],
        ]
        for i in items
    ]
    print(table(rows, ["ID", "Kind", "Target", "Created", "Expires", "Message"]))


async def cmd_unlock(args: argparse.Namespace) -> None:
    from remoteler.audit.events import HUB_NODE, EventType, make_event

    backend, audit = await _open(args)
    try:
        lock = await backend.delete_lock(args.lock_id.strip())
        if lock is None:
            raise UsageError(f"no lock with id {args.lock_id!r}; see 'tctl locks ls'")
        await audit.record(
            make_event(
                EventType.LOCK_DELETED,
                node=HUB_NODE,
                lock_id=lock.id,
                kind=lock.kind,
                target=lock.target,
            )
        )
    finally:
        await backend.close()
        await audit.close()
    print(f"Lock {lock.id} on {lock.kind} {lock.target!r} removed.")


async def cmd_users_unlock(args: argparse.Namespace, backend: Any) -> None:
    if await backend.get_user(args.name) is None:
        raise UsageError(f"no user {args.name!r}; see 'tctl users ls'")
    cleared = await backend.clear_login_guard(args.name)
    state = "lockout lifted" if cleared else "was not locked out"
    print(f"User {args.name!r}: {state}; failed-login count reset.")
