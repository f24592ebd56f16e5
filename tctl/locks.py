"""``tctl lock``, ``tctl locks ls``, ``tctl unlock`` and ``tctl users unlock``.

Each is one ``admin.locks.*`` call (hub/admin/users.py); the hub sees a new
lock within a second (hub/auth/locks.py) and tells the agents.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Coroutine
from typing import Any

from remoteler.admin import AdminMethod
from remoteler.textfmt import fmt_time, table
from tctl.hubclient import HubClient

Handler = Callable[[argparse.Namespace, HubClient], Coroutine[Any, Any, None]]


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


def _item(lock: Any) -> dict[str, Any]:
    return dict(lock)


async def cmd_lock(args: argparse.Namespace, hub: HubClient) -> None:
    from remoteler.locks import KINDS

    kind = next(k for k in KINDS if getattr(args, k) is not None)
    lock = await hub.call(
        AdminMethod.LOCKS_ADD,
        kind=kind,
        target=getattr(args, kind),
        ttl=args.ttl,
        message=args.message,
    )
    expires = lock["expires"]
    until = f"until {fmt_time(expires)}" if expires is not None else "until 'tctl unlock'"
    text = f"Locked {kind} {lock['target']!r} ({until}). Lock id: {lock['id']}"
    if args.format == "json":
        print(json.dumps(_item(lock), indent=2, sort_keys=True))
    else:
        print(text)


async def cmd_locks(args: argparse.Namespace, hub: HubClient) -> None:
    items = [_item(lock) for lock in await hub.call(AdminMethod.LOCKS_LS)]
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


async def cmd_unlock(args: argparse.Namespace, hub: HubClient) -> None:
    lock = await hub.call(AdminMethod.LOCKS_RM, lock_id=args.lock_id)
    print(f"Lock {lock['id']} on {lock['kind']} {lock['target']!r} removed.")


async def cmd_users_unlock(args: argparse.Namespace, hub: HubClient) -> None:
    out = await hub.call(AdminMethod.USERS_UNLOCK, name=args.name)
    state = "lockout lifted" if out["cleared"] else "was not locked out"
    print(f"User {args.name!r}: {state}; failed-login count reset.")
