"""CA rotation on disk: the state file, the next CAs, and which nodes caught up.

Layout (in the hub's data directory)::

    DIR/ca/rotation.json     {"user": RotationState, "host": RotationState}
    DIR/ca/rotation.lock     flock'd by whoever changes the state (tctl, the hub)
    DIR/ca/next/             {kind}_ca.{key,pub,crt}: the new CA while rotating (its key
                             encrypted like the others when a CA passphrase is set)
    DIR/rotation-nodes.json  node id -> the revision it acknowledged (written by the hub)

``tctl`` and the running hub both change the state (tctl by command, the hub
in auto mode), always under the lock; the hub notices any change by the state
file's content (one small read a second).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

from hub.datadir import DataDir
from hub.rotation.state import (
    Change,
    Mode,
    Phase,
    RotationError,
    RotationState,
    due,
    revision,
    transition,
)
from remoteler.ca import CAError, CAKind, CertAuthority, write_file_atomic, write_secret_file
from remoteler.errors import ConfigError, UsageError

log = logging.getLogger("remoteler.hub.rotation")

KINDS: tuple[CAKind, ...] = get_args(CAKind)


@dataclass(frozen=True)
class Authorities:
    """One kind's CAs and rotation state: which CA does which job now."""

    kind: CAKind
    state: RotationState
    current: CertAuthority
    next: CertAuthority | None

    def _pick(self, which: str) -> CertAuthority:
        if which == "next" and self.next is not None:
            return self.next
        return self.current

    @property
    def signer(self) -> CertAuthority:
        """Signs client certificates (users' certificates, nodes' tunnel certificates)."""
        return self._pick(self.state.signer)

    @property
    def server(self) -> CertAuthority:
        """Signs what servers present (the hub's TLS certificate, SSH host certificates)."""
        return self._pick(self.state.server)

    @property
    def trusted(self) -> list[CertAuthority]:
        """Every CA to accept now: the current one, plus the next one while rotating."""
        cas = [self._pick(w) for w in self.state.trusted]
        return list({ca.pin(): ca for ca in cas}.values())

    def trusted_pems(self) -> list[bytes]:
        return [ca.x509_pem for ca in self.trusted]

    def trusted_pins(self) -> list[str]:
        return [ca.pin() for ca in self.trusted]


@dataclass(frozen=True)
class CASet:
    user: Authorities
    host: Authorities

    @property
    def revision(self) -> str:
        return revision(self.user.state, self.host.state)

    def of(self, kind: str) -> Authorities:
        return self.user if kind == "user" else self.host


class RotationStore:
    def __init__(self, data: DataDir) -> None:
        self.data = data

    @property
    def state_path(self) -> Path:
        return self.data.ca_dir / "rotation.json"

    @property
    def next_dir(self) -> Path:
        return self.data.ca_dir / "next"

    @property
    def acks_path(self) -> Path:
        return self.data.path / "rotation-nodes.json"

    # -- reading -------------------------------------------------------------

    def read_states(self) -> dict[CAKind, RotationState]:
        try:
            raw = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            raw = {}
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"{self.state_path} is unreadable ({exc}); restore it from backup"
            ) from None
        try:
            return {k: RotationState.from_dict(raw.get(k, {})) for k in KINDS}
        except RotationError as exc:
            raise ConfigError(f"{self.state_path}: {exc}; restore it from backup") from None

    def stamp(self) -> bytes:
        """Changes whenever the state changes (b"" if there is no state file).

        A digest of the (small) file, not its mtime: the kernel updates mtimes once
        per clock tick, so two changes within one tick (auto mode advancing both CA
        types) would look like one and the hub would miss the second.
        """
        try:
            return hashlib.sha256(self.state_path.read_bytes()).digest()
        except FileNotFoundError:
            return b""

    def load(self) -> CASet:
        """The CAs and states as stored now."""
        states = self.read_states()
        sets = {}
        for kind in KINDS:
            current = self.data.load_ca(kind)
            nxt = None
            if states[kind].rotating:
                try:
                    nxt = self.data.load_ca(kind, self.next_dir)
                except (CAError, ConfigError) as exc:
                    raise ConfigError(
                        f"the {kind} CA is rotating (phase {states[kind].phase}) but its new "
                        f"key is unusable: {exc}; roll back with 'tctl auth rotate --type {kind} "
                        "--manual --phase rollback'"
                    ) from None
                if nxt.pin() == current.pin():
                    nxt = None  # promoted, the state write did not happen: behave as standby
            sets[kind] = Authorities(kind, states[kind], current, nxt)
        return CASet(sets["user"], sets["host"])

    # -- changing ----------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        self.data.ca_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.data.ca_dir / "rotation.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def change(
        self,
        kind: str,
        target: Phase,
        now: float,
        *,
        mode: Mode = "manual",
        grace_period: float | None = None,
    ) -> Change:
        """Apply one transition of ``kind`` with its side effects; raise UsageError if refused."""
        if kind not in KINDS:
            raise UsageError(f"CA type must be 'user' or 'host', not {kind!r}")
        with self.locked():
            states = self.read_states()
            try:
                change = transition(states[kind], target, now, mode=mode, grace_period=grace_period)
            except RotationError as exc:
                raise UsageError(f"{kind} CA: {exc}") from None
            self._apply(kind, change, states)
        return change

    def advance_due(self, now: float) -> list[tuple[CAKind, Change]]:
        """Auto mode: make every phase change that is due (the hub calls this each second)."""
        states = self.read_states()
        if not any(due(s, now) for s in states.values()):
            return []
        done = []
        with self.locked():
            states = self.read_states()  # again, under the lock
            for kind in KINDS:
                target = due(states[kind], now)
                if target is None:
                    continue
                change = transition(states[kind], target, now, mode="auto")
                self._apply(kind, change, states)
                done.append((kind, change))
        return done

    def _apply(self, kind: CAKind, change: Change, states: dict[CAKind, RotationState]) -> None:
        """Side effects in an order that survives a crash at any point (see :meth:`load`)."""
        key_path, pub_path, crt_path = CertAuthority.paths(self.next_dir, kind)
        if change.generate_next:
            self.data.save_ca(CertAuthority.generate(kind, self.data.cluster_name()), self.next_dir)
        if change.promote_next:
            # Overwrites the old CA's files, key last; load() copes with a crash
            # before the state below is written (next == current means done).
            self.data.save_ca(self.data.load_ca(kind, self.next_dir), self.data.ca_dir)
        states = {**states, kind: change.state}
        write_secret_file(
            self.state_path,
            json.dumps({k: s.to_dict() for k, s in states.items()}, indent=2).encode(),
        )
        if change.promote_next or change.discard_next:
            for path in (key_path, pub_path, crt_path):
                path.unlink(missing_ok=True)
        log.info(
            "CA rotation phase",
            extra={"ca_type": kind, "phase": change.after.value, "previous": change.before.value},
        )

    # -- which nodes have caught up ------------------------------------------------

    def read_acks(self) -> dict[str, str]:
        try:
            raw = json.loads(self.acks_path.read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(raw, dict):
            return {}
        return {str(k): str(v) for k, v in raw.items()}

    def write_acks(self, acks: dict[str, str]) -> None:
        write_file_atomic(self.acks_path, json.dumps(acks, sort_keys=True).encode(), 0o600)
