"""The device's A/B firmware slots and their on-disk state (no processes run here).

Layout under ``<data dir>/firmware``::

    slots/a/, slots/b/    two slot directories; one is active
    current               symlink -> slots/a or slots/b (replaced atomically)
    state.json            versions per slot, the pending install, recent results

A new firmware is unpacked into the inactive slot, ``current`` is switched, and
a *pending* record (new slot, old slot, deadline) is written before anything
may restart: whoever starts next (this process or the agent after a restart)
finds it and either confirms the new slot or points ``current`` back.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from remoteler.fsutil import write_file_atomic

__all__ = ["SLOT_NAMES", "Pending", "Result", "Slots"]

SLOT_NAMES = ("a", "b")
#: Results remembered (the hub asks again after a cut link or a restart).
MAX_RESULTS = 16


@dataclass(frozen=True)
class Pending:
    """An install switched to ``new`` and not yet confirmed by a health check."""

    sha256: str
    """The bundle file's sha256 (the key of its result)."""
    rollout: str
    version: str
    new: str
    """Slot now in ``current``."""
    old: str | None
    """Slot to go back to (None: there was no firmware before)."""
    deadline: float
    """Unix time by which the health check must have passed."""
    restart: bool = False
    """The install hook asked for an agent restart before the health check."""


@dataclass(frozen=True)
class Result:
    """How an install of one bundle ended."""

    state: str
    """``installed``, ``failed`` or ``rolled-back``."""
    detail: str
    version: str
    rollout: str = ""
    """The roll-out it answered: a new roll-out of the same bundle is judged afresh."""


class Slots:
    """A/B slots under ``root``; every change is written before it returns."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.state_path = root / "state.json"
        self.current_link = root / "current"
        for name in SLOT_NAMES:
            (root / "slots" / name).mkdir(parents=True, exist_ok=True)
        self._state = self._load()

    def _load(self) -> dict[str, Any]:
        try:
            state = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return {"versions": {}, "pending": None, "results": {}}
        except (OSError, ValueError):  # a torn write cannot happen (replace), but be safe
            return {"versions": {}, "pending": None, "results": {}}
        return state if isinstance(state, dict) else {"versions": {}, "results": {}}

    def _save(self) -> None:
        write_file_atomic(self.state_path, json.dumps(self._state, sort_keys=True).encode())

    # -- slots -----------------------------------------------------------------
    def path(self, slot: str) -> Path:
        if slot not in SLOT_NAMES:
            raise ValueError(f"no slot {slot!r}")
        return self.root / "slots" / slot

    def current(self) -> str | None:
        """The active slot, or None before the first install."""
        with contextlib.suppress(OSError):
            target = os.readlink(self.current_link)
            name = Path(target).name
            if name in SLOT_NAMES:
                return name
        return None

    def inactive(self) -> str:
        return "b" if self.current() == "a" else "a"

    def version(self, slot: str | None = None) -> str | None:
        """Firmware version in ``slot`` (default: the active one)."""
        slot = slot or self.current()
        versions = self._state.get("versions") or {}
        return versions.get(slot) if slot else None

    def prepare(self, slot: str) -> Path:
        """Empty ``slot`` for a new firmware and return its directory.

        Read-only directories a hook left behind are made writable and removed;
        raises OSError when something still cannot be.
        """
        path = self.path(slot)
        if os.path.lexists(path):
            _rmtree(str(path), _writable_and_retry)
        path.mkdir(parents=True)
        self._state.setdefault("versions", {}).pop(slot, None)
        self._save()
        return path

    def switch(self, slot: str | None, version: str | None = None) -> None:
        """Point ``current`` at ``slot`` atomically (None: no firmware)."""
        if slot is None:
            self.current_link.unlink(missing_ok=True)
            return
        self.path(slot)
        if version is not None:
            self._state.setdefault("versions", {})[slot] = version
            self._save()
        tmp = self.root / "current.tmp"
        tmp.unlink(missing_ok=True)
        os.symlink(Path("slots") / slot, tmp)
        os.replace(tmp, self.current_link)

    # -- pending install ------------------------------------------------------------
    def pending(self) -> Pending | None:
        raw = self._state.get("pending")
        if not isinstance(raw, dict):
            return None
        try:
            return Pending(**raw)
        except TypeError:
            return None

    def set_pending(self, pending: Pending | None) -> None:
        self._state["pending"] = asdict(pending) if pending is not None else None
        self._save()

    # -- results -----------------------------------------------------------------------
    def result(self, sha256: str) -> Result | None:
        raw = (self._state.get("results") or {}).get(sha256)
        if not isinstance(raw, dict):
            return None
        try:
            return Result(**raw)
        except TypeError:
            return None

    def set_result(self, sha256: str, result: Result) -> None:
        results = self._state.setdefault("results", {})
        results.pop(sha256, None)
        results[sha256] = asdict(result)
        while len(results) > MAX_RESULTS:
            results.pop(next(iter(results)))
        self._save()


Handler = Callable[[Callable[..., Any], str, Any], None]


def _rmtree(path: str, handler: Handler) -> None:
    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=handler)
    else:
        shutil.rmtree(path, onerror=handler)


def _writable_and_retry(func: Callable[..., Any], path: str, _exc: object) -> None:
    """rmtree's error handler: give the owner write (and search) access, try once more."""
    for target in (os.path.dirname(path), path):
        with contextlib.suppress(OSError):
            mode = os.lstat(target).st_mode
            if stat.S_ISDIR(mode):
                os.chmod(target, stat.S_IMODE(mode) | stat.S_IRWXU)
    if func in (os.open, os.scandir, os.lstat) and os.path.isdir(path):
        _rmtree(path, _fail)  # could not be opened before: now it can
    else:
        func(path)


def _fail(func: Callable[..., Any], path: str, exc: Any) -> None:
    raise exc if isinstance(exc, BaseException) else exc[1]
