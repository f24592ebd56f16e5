"""Locks: an operator's "stop this user, login or node now", shared by hub and agent.

The hub stores locks (``tctl lock``), refuses what they cover and pushes the
current set to every agent over a ``locks`` tunnel channel; the agent keeps a
copy in its data directory so it refuses locked users while the hub is away.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

LockKind = Literal["user", "node", "login"]
KINDS: tuple[LockKind, ...] = ("user", "node", "login")
#: Longest lock message kept (it is shown to users and sent to every agent).
MAX_MESSAGE = 200
#: Most locks an agent accepts in one push.
MAX_LOCKS = 10_000


@dataclass(frozen=True)
class Lock:
    id: str
    """12 hex digits, what ``tctl locks ls`` shows and ``tctl unlock`` takes."""
    kind: LockKind
    """What the target names: a Remoteler user, a node (id or name), or an OS login."""
    target: str
    message: str = ""
    """Shown to the locked user; may be empty."""
    created: float = 0.0
    expires: float | None = None
    """Unix seconds after which the lock no longer applies; None: until ``tctl unlock``."""
    created_by: str = ""

    def active(self, now: float) -> bool:
        return self.expires is None or now < self.expires

    def covers(self, user: str, login: str, nodes: Sequence[str]) -> bool:
        if self.kind == "user":
            return self.target == user
        if self.kind == "login":
            return self.target == login
        return self.target in nodes

    def refusal(self) -> str:
        """The one line a locked user sees."""
        what = {"user": "user", "node": "node", "login": "login"}[self.kind]
        text = f"{what} {self.target!r} is locked by an administrator"
        return f"{text}: {self.message}" if self.message else text

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "target": self.target,
            "message": self.message,
            "created": self.created,
            "expires": self.expires,
        }

    @classmethod
    def from_wire(cls, d: Any) -> Lock:
        """Raise ValueError unless ``d`` is a well-formed lock map."""
        if not isinstance(d, dict):
            raise ValueError("a lock must be a map")
        kind, target, lock_id = d.get("kind"), d.get("target"), d.get("id")
        message, expires = d.get("message", ""), d.get("expires")
        if kind not in KINDS or not isinstance(target, str) or not isinstance(lock_id, str):
            raise ValueError("a lock needs an id, a kind (user, node, login) and a target")
        if not isinstance(message, str):
            raise ValueError("a lock message must be a string")
        if expires is not None and not isinstance(expires, (int, float)):
            raise ValueError("a lock's expiry must be a number or null")
        created = d.get("created", 0.0)
        return cls(
            id=lock_id[:64],
            kind=kind,
            target=target[:256],
            message=message[:MAX_MESSAGE],
            created=float(created) if isinstance(created, (int, float)) else 0.0,
            expires=None if expires is None else float(expires),
        )


def find_lock(
    locks: Iterable[Lock], *, user: str = "", login: str = "", nodes: Sequence[str] = (), now: float
) -> Lock | None:
    """The first active lock covering this user, login or node, else None."""
    for lock in locks:
        if lock.active(now) and lock.covers(user, login, nodes):
            return lock
    return None


def encode_locks(locks: Iterable[Lock]) -> bytes:
    return json.dumps([lock.to_wire() for lock in locks], sort_keys=True).encode()


def lock_digest(locks: Iterable[Lock]) -> str:
    """A short digest of a lock set: an agent reports it when it dials, and the hub
    pushes only when it differs (a reconnect storm costs no pushes)."""
    return hashlib.sha256(encode_locks(locks)).hexdigest()[:16]


def decode_locks(data: bytes) -> list[Lock]:
    """Raise ValueError on anything but a list of lock maps."""
    try:
        raw = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"lock set is not JSON: {exc}") from None
    if not isinstance(raw, list) or len(raw) > MAX_LOCKS:
        raise ValueError(f"a lock set must be a list of at most {MAX_LOCKS} locks")
    return [Lock.from_wire(item) for item in raw]
