"""CA rotation through the hub's storage: the state, the CAs of each phase, and the acks.

The state of both CA kinds and the CAs (current, and next while rotating) are in
:class:`~hub.storage.api.Storage` (``storage.rotation``, ``storage.authorities``).
Every phase change is one compare-and-set on the state's revision
(:meth:`hub.storage.api.Rotation.advance`) carrying the CA changes it implies, so
two hubs running the auto-mode loop, or a hub and ``tctl``, never both make one
step: the loser re-reads and decides again. The hub learns of a change from the
change feed (topic ``rotation``), not from a file.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import get_args

from hub.cakeys import to_authority, to_stored
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
from hub.storage.api import Conflict, Storage, StorageError, StoredCA
from remoteler.ca import CAKind, CertAuthority
from remoteler.errors import ConfigError, UsageError

log = logging.getLogger("remoteler.hub.rotation")

KINDS: tuple[CAKind, ...] = get_args(CAKind)
#: compare-and-set attempts of one command before it gives up (each one re-reads)
RETRIES = 5


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
    def __init__(self, storage: Storage, cluster: str, passphrase: bytes | None) -> None:
        self.storage = storage
        self.cluster = cluster
        self.passphrase = passphrase

    # -- reading -------------------------------------------------------------

    async def read_states(self) -> tuple[dict[CAKind, RotationState], int]:
        """Both kinds' states and the revision a change must name."""
        try:
            record = await self.storage.rotation.get()
        except StorageError as exc:
            raise ConfigError(str(exc)) from None
        try:
            states = {k: RotationState.from_dict(dict(record.states.get(k, {}))) for k in KINDS}
        except RotationError as exc:
            raise ConfigError(
                f"the stored CA rotation state is damaged ({exc}); restore hub.db from backup"
            ) from None
        return states, record.revision

    async def revision(self) -> int:
        return (await self.storage.rotation.get()).revision

    async def _stored(self) -> dict[tuple[str, str], StoredCA]:
        try:
            return {(c.kind, c.slot): c for c in await self.storage.authorities.all()}
        except StorageError as exc:
            raise ConfigError(str(exc)) from None

    async def load(self) -> CASet:
        """The CAs and states as stored now."""
        return (await self.load_revision())[0]

    async def load_revision(self) -> tuple[CASet, int]:
        states, rev = await self.read_states()
        stored = await self._stored()
        sets = {}
        for kind in KINDS:
            if (kind, "current") not in stored:
                raise ConfigError(
                    f"the hub's storage has no {kind} CA: start the hub once to create the "
                    "cluster, or pass the right --data-dir"
                )
            current = to_authority(stored[kind, "current"], self.cluster, self.passphrase)
            nxt = None
            if states[kind].rotating:
                try:
                    if (kind, "next") not in stored:
                        raise ConfigError("it is missing")
                    nxt = to_authority(stored[kind, "next"], self.cluster, self.passphrase)
                except ConfigError as exc:
                    raise ConfigError(
                        f"the {kind} CA is rotating (phase {states[kind].phase}) but its new "
                        f"key is unusable: {exc}; roll back with 'tctl auth rotate --type {kind} "
                        "--manual --phase rollback'"
                    ) from None
                if nxt.pin() == current.pin():
                    nxt = None  # promoted, the state write did not happen: behave as standby
            sets[kind] = Authorities(kind, states[kind], current, nxt)
        return CASet(sets["user"], sets["host"]), rev

    # -- changing ----------------------------------------------------------------

    async def change(
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
        for _ in range(RETRIES):
            states, rev = await self.read_states()
            try:
                change = transition(states[kind], target, now, mode=mode, grace_period=grace_period)
            except RotationError as exc:
                raise UsageError(f"{kind} CA: {exc}") from None
            try:
                await self._apply(kind, change, states, rev)
            except Conflict:
                continue  # moved under us: decide again on what is stored now
            return change
        raise UsageError("the CA rotation kept changing while this command ran; try again")

    async def advance_due(self, now: float) -> list[tuple[CAKind, Change]]:
        """Auto mode: make every phase change that is due (each hub calls this each second;
        a step another hub made first is a Conflict here, and nothing more)."""
        states, rev = await self.read_states()
        done: list[tuple[CAKind, Change]] = []
        for kind in KINDS:
            target = due(states[kind], now)
            if target is None:
                continue
            change = transition(states[kind], target, now, mode="auto")
            try:
                await self._apply(kind, change, states, rev)
            except Conflict:
                return done  # someone else advanced: the next look re-reads
            states, rev = {**states, kind: change.state}, rev + 1
            done.append((kind, change))
        return done

    async def _apply(
        self, kind: CAKind, change: Change, states: dict[CAKind, RotationState], rev: int
    ) -> None:
        """One compare-and-set: the new states and the CA files the step implies."""
        put: list[StoredCA] = []
        remove: list[tuple[CAKind, str]] = []
        if change.generate_next:
            fresh = CertAuthority.generate(kind, self.cluster)
            put.append(to_stored(fresh, "next", self.passphrase))
        if change.promote_next:
            nxt = (await self._stored()).get((kind, "next"))
            if nxt is None:
                raise ConfigError(f"the {kind} CA's new key is missing: roll the rotation back")
            put.append(replace(nxt, slot="current"))
        if change.promote_next or change.discard_next:
            remove.append((kind, "next"))
        new = {**states, kind: change.state}
        try:
            await self.storage.rotation.advance(
                rev,
                {k: s.to_dict() for k, s in new.items()},
                put,
                remove,  # type: ignore[arg-type]
            )
        except Conflict:
            raise
        except StorageError as exc:
            raise ConfigError(str(exc)) from None
        log.info(
            "CA rotation phase",
            extra={"ca_type": kind, "phase": change.after.value, "previous": change.before.value},
        )

    # -- which nodes have caught up ------------------------------------------------

    async def read_acks(self) -> dict[str, str]:
        return await self.storage.rotation.acks()

    async def ack(self, node_id: str, rev: str) -> None:
        await self.storage.rotation.ack(node_id, rev)
