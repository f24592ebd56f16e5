"""The device's copy of the hub's locks, and the sessions they may end.

The hub pushes its whole active lock set over a ``locks`` channel whenever it
changes (and once per tunnel). The set is kept in ``DIR/locks.json`` so the
device refuses locked users and logins after a restart with the hub
unreachable. An unreadable file is reported and treated as no locks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from remoteler.ca import write_secret_file
from remoteler.locks import Lock, decode_locks, encode_locks, find_lock

log = logging.getLogger("remoteler.agent.locks")

#: Largest lock set read from a ``locks`` channel.
MAX_PUSH_BYTES = 4 << 20


@dataclass
class _Session:
    user: str
    login: str
    end: Callable[[str], None]


class LockStore:
    def __init__(
        self,
        path: Path | None = None,
        nodes: Sequence[str] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.nodes = tuple(nodes)
        self.clock = clock
        self.locks: list[Lock] = []
        self._sessions: dict[int, _Session] = {}
        self._next = 0

    @classmethod
    def load(cls, path: Path, nodes: Sequence[str]) -> LockStore:
        store = cls(path, nodes)
        if path.exists():
            try:
                store.locks = decode_locks(path.read_bytes())
            except (OSError, ValueError) as exc:
                log.warning("lock cache unreadable, ignored: %s", exc, extra={"path": str(path)})
        return store

    def find(self, user: str, login: str) -> Lock | None:
        return find_lock(self.locks, user=user, login=login, nodes=self.nodes, now=self.clock())

    def replace(self, locks: list[Lock]) -> None:
        """Take the hub's new set: save it, then end the sessions it covers."""
        self.locks = locks
        if self.path is not None:
            write_secret_file(self.path, encode_locks(locks))
        log.info("locks updated", extra={"locks": len(locks)})
        for session in list(self._sessions.values()):
            lock = self.find(session.user, session.login)
            if lock is not None:
                log.info(
                    "ending a locked session",
                    extra={"user": session.user, "login": session.login, "lock_id": lock.id},
                )
                session.end(f"session ended: {lock.refusal()}")

    def track(self, user: str, login: str, end: Callable[[str], None]) -> Callable[[], None]:
        """Watch an authenticated SSH connection; call the result when it closes."""
        key = self._next
        self._next += 1
        self._sessions[key] = _Session(user, login, end)

        def untrack() -> None:
            self._sessions.pop(key, None)

        return untrack


async def serve_locks_channel(channel: Any, store: LockStore) -> None:
    """Read a pushed lock set to EOF, apply it, answer ``ok`` and close."""
    try:
        data = bytearray()
        while chunk := await channel.read(65536):
            data += chunk
            if len(data) > MAX_PUSH_BYTES:
                log.warning("lock set too large; ignored")
                return
        try:
            locks = decode_locks(bytes(data))
        except ValueError as exc:
            log.warning("bad lock set from the hub: %s", exc)
            return
        store.replace(locks)
        channel.write(b"ok")
        channel.write_eof()
    finally:
        channel.close()
