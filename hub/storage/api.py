"""Everything the hub keeps, behind one interface: records, errors and the engine protocol.

A hub holds one :class:`Storage`; it is the only object in the hub that opens a
database or a state file. Two engines implement it: ``hub.storage.sqlite``
(the embedded default, a data directory) and ``hub.storage.postgres`` (one
database that several hubs share). ``tests/hub/storage/test_contract.py`` runs
the same cases against both.

Rules every engine keeps:

* Every method is one transaction: it happens entirely or not at all, and the
  operations named *atomic* below are single statements or compare-and-set, so
  two hubs on one database never both win.
* Errors are :class:`StorageError` subclasses only (no ``sqlite3`` or
  ``psycopg`` exception escapes an engine): :class:`Conflict` when a write
  loses to another, :class:`NotFound` when what it changes is gone,
  :class:`TooNew` when the database was written by a newer hub,
  :class:`Unavailable` when the database cannot be reached.
* Times are Unix seconds (float) passed in by the caller; engines read no clock
  except where a method says so.
* Secrets are stored as the caller hands them: token and invite digests,
  password hashes, TOTP seeds and CA keys already encrypted by the caller when a
  CA passphrase is set (``hub/auth/seedcrypt.py``, ``hub/auth/secrets.py``).
* Every write that another hub must learn about publishes a :class:`Change`
  on the change feed (:meth:`Storage.changes`).
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from remoteler.access import Role
from remoteler.audit.events import AuditEvent
from remoteler.locks import Lock

# -- errors ---------------------------------------------------------------------------


class StorageError(Exception):
    """Any failure of the storage; the message is one line for the operator."""


class Conflict(StorageError):
    """A write lost to another one (a duplicate key, a compare-and-set that failed)."""


class NotFound(StorageError):
    """The record a write needs does not exist (any more)."""


class TooNew(StorageError):
    """The database's schema is newer than this hub: upgrade the hub, never downgrade."""


class Unavailable(StorageError):
    """The database cannot be reached or refused the credentials."""


# -- records --------------------------------------------------------------------------

#: A node's session mode: "off" = end to end (the hub only relays bytes), "proxy" =
#: the hub terminates SSH and records the session (hub/recording.py).
RECORDING_MODES = ("off", "proxy")


@dataclass(frozen=True)
class User:
    name: str
    roles: tuple[str, ...]
    logins: tuple[str, ...]
    password_hash: str | None
    #: stored as given: encrypted by the caller when a CA passphrase is set
    totp_secret: str | None
    totp_last_step: int
    created: float
    #: the SSO connector that made this user (docs/sso.md); None for a local user
    connector: str | None = None
    #: the identity provider's claims as traits, ``{{external.NAME}}`` in role templates
    traits: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: when an SSO user's record lapses (its certificates' end); None: never (local users)
    expires: float | None = None


@dataclass(frozen=True)
class Token:
    token_hash: str
    kind: str
    labels: Mapping[str, str]
    created: float
    expires: float
    used_by: str | None

    @property
    def token_id(self) -> str:
        """Public handle of a token (a digest prefix): safe to list and log."""
        return self.token_hash[:12]


@dataclass(frozen=True)
class Node:
    id: str
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    version: str = ""
    #: derived on read from presence: some hub holds a tunnel whose lease has not expired
    online: bool = False
    last_seen: float | None = None
    joined: float = 0.0
    #: labels from the join token: they win over what the agent reports
    token_labels: Mapping[str, str] = field(default_factory=dict)
    #: events waiting in the device's outbox, and the time of the oldest (heartbeat)
    audit_pending: int = 0
    audit_oldest: float | None = None
    #: one of :data:`RECORDING_MODES`
    recording: str = "off"
    #: the device's clock minus the hub's, seconds, from its last heartbeat
    clock_skew: float | None = None
    #: what its agent supports (remoteler/caps.py), from its last heartbeat
    caps: tuple[str, ...] = ()
    #: ids of the hubs that hold a live tunnel of this node (from presence)
    held_by: tuple[str, ...] = ()

    def effective_labels(self, reported: Mapping[str, str]) -> dict[str, str]:
        return {**dict(reported), **dict(self.token_labels)}


@dataclass(frozen=True)
class Beat:
    """What one heartbeat changes in a node's row."""

    node_id: str
    last_seen: float
    labels: Mapping[str, str]
    version: str = ""
    audit_pending: int = 0
    audit_oldest: float | None = None
    clock_skew: float | None = None
    caps: tuple[str, ...] = ()


@dataclass(frozen=True)
class Presence:
    """One hub holds one tunnel of a node until ``expires`` (renewed by its beats)."""

    node_id: str
    hub_id: str
    expires: float


@dataclass(frozen=True)
class LoginGuardRow:
    """Failed logins for one user name (known or not), and its lockout."""

    user: str
    failures: int
    first_failure: float
    locked_until: float | None = None


@dataclass(frozen=True)
class GuardPolicy:
    """How :meth:`LoginGuards.fail` counts: ``threshold`` failures within ``window``
    seconds lock the name for ``lockout`` seconds (and restart its count)."""

    window: float
    threshold: int
    lockout: float


@dataclass(frozen=True)
class ReusedSeq:
    """An event refused because its node already stored its seq under another id."""

    seq: int
    id: str
    stored_id: str


@dataclass(frozen=True)
class Inserted:
    """What :meth:`AuditLog.insert_checked` did with a batch."""

    inserted: int
    reused: tuple[ReusedSeq, ...] = ()
    #: with ``reused``: the node's highest stored seq + 1; 0 otherwise
    seq_floor: int = 0


@dataclass(frozen=True)
class AuditQuery:
    """Filters of ``tctl audit search`` (AND); ``since`` inclusive, ``until`` exclusive."""

    type: str | None = None
    node: str | None = None
    user: str | None = None
    session_id: str | None = None
    since: float | None = None
    until: float | None = None
    #: None: all of them (only with :meth:`AuditLog.iter_search`)
    limit: int | None = 1000
    newest_first: bool = False


CAKindName = Literal["user", "host"]
CASlot = Literal["current", "next"]


@dataclass(frozen=True)
class StoredCA:
    """One certificate authority as stored: the key is opaque bytes (OpenSSH private
    key, encrypted by the caller with the CA passphrase when one is set)."""

    kind: CAKindName
    slot: CASlot
    private_key: bytes
    ssh_public: str
    x509_pem: bytes

    def __repr__(self) -> str:  # never the key
        return f"<StoredCA {self.kind}/{self.slot}>"


@dataclass(frozen=True)
class RotationRecord:
    """Both kinds' rotation states (``hub.rotation.RotationState.to_dict``) and the
    revision a compare-and-set must name; revision 0: never written."""

    states: Mapping[str, Mapping[str, object]]
    revision: int


@dataclass(frozen=True)
class Rollout:
    id: str
    created: float
    name: str
    version: str
    #: name of the bundle's blob (:class:`Blobs`): its sha256, hex
    bundle: str
    sha256: str
    size: int
    selector: Mapping[str, str]
    canary_percent: float | None
    max_parallel: int
    #: bytes per second per transfer, or None: no cap
    rate: float | None
    force: bool
    #: ``running``, ``stopped`` (a canary failed or tctl stopped it) or ``done``
    state: str
    reason: str = ""
    finished: float | None = None
    canary_timeout: float = 600.0


#: Node states after which a roll-out does nothing more with the node.
FINAL = frozenset({"installed", "failed", "rolled-back"})


@dataclass(frozen=True)
class RolloutNode:
    rollout: str
    node_id: str
    node_name: str
    canary: bool
    #: ``pending``, then the agent's states (remoteler.firmware_xfer.STATES)
    state: str
    detail: str
    progress: int
    #: largest offset > 0 a transfer to this node continued from (0: never resumed)
    resumed_from: int
    attempts: int
    updated: float
    #: how many times a hub claimed this node's next step (:meth:`Firmware.claim`)
    claims: int = 0

    @property
    def final(self) -> bool:
        return self.state in FINAL


@dataclass(frozen=True)
class TrustedKey:
    """A firmware signing key the hub accepts bundles from."""

    #: ``SHA256:...`` of the public key, what ``tctl firmware trust ls`` shows
    fingerprint: str
    #: OpenSSH public key line
    public_key: str
    comment: str
    added: float


@dataclass(frozen=True)
class HubRecord:
    """One hub of the cluster, as it last registered (its lease)."""

    id: str
    #: HOST:PORT agents and users dial (--public-addr, else the listen address)
    public_addr: str
    #: HOST:PORT other hubs dial for peer links ("" when the hub has none)
    peer_addr: str
    #: wall clock the hub process started
    started: float
    #: wall clock the registration lapses unless renewed
    expires: float
    #: agent tunnels the hub held at its last beat
    agents: int = 0
    version: str = ""
    #: wall clock of the last beat (set by the caller)
    beat_at: float = 0.0


@dataclass(frozen=True)
class Lease:
    """A named cluster-wide lease (:class:`Leases`): who holds it, until when."""

    name: str
    #: the holder's id (a hub id)
    holder: str
    #: wall clock it lapses unless the holder renews it
    expires: float
    #: wall clock the holder took it (kept by renewals)
    acquired: float


Topic = Literal[
    "users",
    "roles",
    "locks",
    "nodes",
    "tokens",
    "rotation",
    "firmware",
    "trusted",
    "hubs",
    "leases",
    "connectors",
]
TOPICS: tuple[Topic, ...] = (
    "users",
    "roles",
    "locks",
    "nodes",
    "tokens",
    "rotation",
    "firmware",
    "trusted",
    "hubs",
    "leases",
    "connectors",
)


@dataclass(frozen=True)
class Change:
    """Something in ``topic`` changed; ``key`` names it, or is ``"*"`` when a subscriber
    may have missed changes (after a reconnect) and must re-read the whole topic."""

    topic: Topic
    key: str = "*"


def blob_name(data: bytes) -> str:
    """The name a blob is stored under: its sha256, hex."""
    return hashlib.sha256(data).hexdigest()


# -- the interface, one section per kind of state ----------------------------------------


class Users(Protocol):
    async def get(self, name: str) -> User | None: ...
    async def all(self) -> list[User]: ...
    async def put(self, user: User) -> None: ...
    async def delete(self, name: str) -> bool: ...
    async def record_totp_step(self, name: str, step: int) -> bool:
        """Atomic: True and stored if ``step`` is newer than the last one used."""
        ...


class Roles(Protocol):
    async def get(self, name: str) -> Role | None: ...
    async def all(self) -> list[Role]: ...
    async def put(self, role: Role) -> None: ...
    async def delete(self, name: str) -> bool: ...


class Tokens(Protocol):
    async def add(self, token: Token) -> None: ...
    async def get(self, token_hash: str) -> Token | None: ...
    async def all(self) -> list[Token]: ...
    async def delete(self, token_id: str) -> int:
        """Delete the tokens whose id (digest prefix) is ``token_id``; how many."""
        ...

    async def consume(self, token_hash: str, used_by: str, now: float) -> bool:
        """Atomic: mark an unexpired, unused token used by ``used_by``; False if it was not."""
        ...


class Invites(Protocol):
    async def add(self, token_hash: str, user: str, expires: float) -> None: ...
    async def check(self, token_hash: str, user: str, now: float) -> bool: ...
    async def consume(self, token_hash: str, user: str, now: float) -> bool:
        """Atomic: delete a valid invite; False if there was none."""
        ...


class Nodes(Protocol):
    async def add(self, node: Node) -> None:
        """Raises :class:`Conflict` if the name is taken by another id."""
        ...

    async def get(self, key: str) -> Node | None:
        """By id, or by name."""
        ...

    async def all(self) -> list[Node]: ...
    async def delete(self, key: str) -> bool: ...
    async def set_recording(self, key: str, mode: str) -> Node | None: ...
    async def recordings(self, ids: Sequence[str]) -> dict[str, str]: ...
    async def heartbeats(self, beats: Sequence[Beat]) -> list[str]:
        """Store a batch of heartbeats; the ids of nodes that no longer exist."""
        ...


class PresenceTable(Protocol):
    """Which hubs hold which nodes' tunnels. A node is online while a lease is live."""

    async def beat(self, node_id: str, hub_id: str, expires: float) -> None:
        """Atomic upsert of one lease."""
        ...

    async def beat_many(self, leases: Sequence[Presence]) -> None: ...
    async def drop(self, node_id: str, hub_id: str) -> None: ...
    async def drop_hub(self, hub_id: str) -> int:
        """Remove every lease of ``hub_id`` (its start and its clean stop); how many."""
        ...

    async def holders(self, node_id: str, now: float) -> list[Presence]: ...
    async def all(self, now: float) -> list[Presence]:
        """Every lease live at ``now`` (of every node and hub), by node then hub: which
        hubs hold each node, in one query."""
        ...

    async def expire(self, now: float, limit: int) -> int:
        """Delete up to ``limit`` leases that expired before ``now``; how many."""
        ...


class Locks(Protocol):
    async def add(self, lock: Lock) -> None: ...
    async def all(self, now: float) -> list[Lock]:
        """Locks in force at ``now``."""
        ...

    async def delete(self, lock_id: str) -> Lock | None:
        """Atomic: delete and return the lock (None if there was none)."""
        ...


class LoginGuards(Protocol):
    async def get(self, user: str) -> LoginGuardRow | None: ...
    async def fail(self, user: str, now: float, policy: GuardPolicy) -> LoginGuardRow:
        """Atomic (one ``UPSERT ... RETURNING``): count a failure and return the row.

        A failure older than ``policy.window`` restarts the count; reaching
        ``policy.threshold`` sets ``locked_until = now + policy.lockout`` and the
        count back to 0. The caller is locked out while ``now < locked_until``.
        """
        ...

    async def clear(self, user: str) -> bool: ...
    async def prune(self, window_start: float, now: float, limit: int) -> int: ...


class AuditLog(Protocol):
    """Audit events and session recordings (``session.data`` chunks are events)."""

    async def insert_checked(self, node: str, events: Sequence[AuditEvent]) -> Inserted:
        """Idempotent on (node, id): a re-sent event is not stored twice."""
        ...

    async def record(self, event: AuditEvent) -> None:
        """One event of the hub itself (node ``hub``)."""
        ...

    async def search(self, query: AuditQuery) -> list[AuditEvent]: ...
    def iter_search(self, query: AuditQuery) -> AsyncIterator[AuditEvent]:
        """As :meth:`search`, a page at a time (for exports of any size)."""
        ...

    async def session(self, session_id: str) -> list[AuditEvent]: ...
    async def session_ids(self, prefix: str, user: str | None, limit: int) -> list[str]: ...
    async def count(self, node: str | None = None) -> int: ...
    async def prune(self, before: float, limit: int) -> int:
        """Delete up to ``limit`` stored events whose ``time`` is before ``before``, oldest
        first (audit retention); how many. Recording chunks are events: they go by the
        same rule. Call again while it returns ``limit``."""
        ...


class Authorities(Protocol):
    """The CA keys and certificates (two kinds, a current and, while rotating, a next)."""

    async def all(self) -> list[StoredCA]: ...
    async def create(self, cas: Sequence[StoredCA]) -> bool:
        """Atomic: store ``cas`` if no CA is stored yet; False (nothing written) if one is
        (another hub initialised the cluster first: read theirs)."""
        ...

    async def replace_keys(self, cas: Sequence[StoredCA]) -> None:
        """Rewrite stored CAs' key bytes (encrypting plain keys with a new passphrase)."""
        ...


class Rotation(Protocol):
    async def get(self) -> RotationRecord: ...
    async def advance(
        self,
        expect_revision: int,
        states: Mapping[str, Mapping[str, object]],
        put: Sequence[StoredCA] = (),
        remove: Sequence[tuple[CAKindName, CASlot]] = (),
    ) -> RotationRecord:
        """Atomic compare-and-set: store ``states`` and change the CAs as one transaction
        if the revision is still ``expect_revision``; the new record. :class:`Conflict`
        otherwise (someone else moved the rotation: re-read and decide again)."""
        ...

    async def acks(self) -> dict[str, str]:
        """Node id -> the rotation revision it acknowledged."""
        ...

    async def ack(self, node_id: str, revision: str) -> None: ...
    async def forget_acks(self) -> None: ...


class Settings(Protocol):
    """Small cluster-wide values: the cluster name, the TOTP seed salt, ..."""

    async def get(self, key: str) -> str | None: ...
    async def put(self, key: str, value: str) -> None: ...
    async def put_if_absent(self, key: str, value: str) -> str:
        """Atomic: store ``value`` unless the key exists; the stored value either way."""
        ...


class Firmware(Protocol):
    async def create(self, rollout: Rollout, nodes: Sequence[tuple[str, str, bool]]) -> None:
        """A roll-out and its nodes ``(node_id, node_name, canary)``, all pending."""
        ...

    async def rollouts(self, state: str | None = None) -> list[Rollout]: ...
    async def rollout(self, rollout_id: str) -> Rollout | None: ...
    async def nodes(self, rollout_id: str) -> list[RolloutNode]: ...
    async def update_node(
        self,
        rollout_id: str,
        node_id: str,
        state: str,
        detail: str,
        now: float,
        progress: int | None = None,
        resumed_from: int | None = None,
        attempt: bool = False,
        expect: str | None = None,
    ) -> bool:
        """Set a node's state; with ``expect``, atomic compare-and-set on the current
        state (how a hub claims a node's step); ``resumed_from`` keeps the largest."""
        ...

    async def claim(self, rollout_id: str, node_id: str, claims: int, now: float) -> bool:
        """Atomic compare-and-set: the hub that read the node with ``claims`` takes its next
        step (offers it the bundle) and the count goes up by one. Of hubs racing on one
        read exactly one gets True; False also when the roll-out is no longer running
        or the node is final. The caller that gets False leaves the node alone."""
        ...

    async def replace_canary(
        self, rollout_id: str, old_id: str, new_id: str, detail: str, now: float
    ) -> bool: ...
    async def finish(self, rollout_id: str, state: str, reason: str, now: float) -> bool:
        """End a running roll-out; False (nothing changed) if it was not running."""
        ...


class TrustedKeys(Protocol):
    async def all(self) -> list[TrustedKey]: ...
    async def add(self, key: TrustedKey) -> bool:
        """False if the fingerprint was already trusted."""
        ...

    async def remove(self, fingerprint: str) -> bool: ...


class Blobs(Protocol):
    """Large immutable files (firmware bundles), named by their sha256."""

    async def put(self, name: str, chunks: AsyncIterator[bytes], max_size: int) -> int:
        """Store the bytes as ``name``; their size. Raises :class:`Conflict` if they do not
        hash to ``name`` or exceed ``max_size`` (nothing is kept then)."""
        ...

    async def size(self, name: str) -> int | None: ...
    async def read(self, name: str, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes from ``offset`` (fewer at the end); :class:`NotFound`."""
        ...

    async def delete(self, name: str) -> bool: ...
    async def names(self) -> list[str]: ...


class Hubs(Protocol):
    """The hubs of the cluster: each registers with a lease it renews (its beat)."""

    async def beat(self, hub: HubRecord) -> None:
        """Insert or replace the hub's record (its registration lease)."""
        ...

    async def live(self, now: float) -> list[HubRecord]:
        """Hubs whose lease runs past ``now``, sorted by id."""
        ...

    async def get(self, hub_id: str) -> HubRecord | None: ...
    async def drop(self, hub_id: str) -> bool:
        """Remove the hub's record (a clean stop)."""
        ...

    async def expire(self, now: float, limit: int) -> int:
        """Delete up to ``limit`` lapsed records; how many."""
        ...


class Leases(Protocol):
    """Named leases for work one hub of the cluster does at a time (``hub/singleton.py``)."""

    async def acquire(self, name: str, holder: str, expires: float, now: float) -> bool:
        """Take or renew the lease ``name`` for ``holder`` until ``expires``, atomically in
        the database: true when it is absent, lapsed (expires <= now), or already
        ``holder``'s (renewal keeps ``acquired``); false when another holder has it."""
        ...

    async def release(self, name: str, holder: str) -> bool:
        """Give the lease up if ``holder`` has it."""
        ...

    async def get(self, name: str) -> Lease | None:
        """The lease as stored (lapsed too: see its ``expires``), or None."""
        ...

    async def all(self) -> list[Lease]:
        """Every stored lease, lapsed ones too, by name."""
        ...


@dataclass(frozen=True)
class StoredConnector:
    """An SSO connector (hub/sso/connectors.py): its document as JSON, the client
    secret in it already encrypted by the caller when a CA passphrase is set."""

    name: str
    kind: str  # "oidc", "github" or "saml"
    spec: str
    created: float

    def __repr__(self) -> str:  # never the spec: it holds the client secret
        return f"<StoredConnector {self.kind}/{self.name}>"


class Connectors(Protocol):
    async def get(self, name: str) -> StoredConnector | None: ...
    async def all(self) -> list[StoredConnector]:
        """Every connector, by name."""
        ...

    async def put(self, connector: StoredConnector) -> None:
        """Create or replace (publishes ``Change("connectors", name)``)."""
        ...

    async def delete(self, name: str) -> bool: ...


def sso_kind_range(key: str) -> tuple[str, str]:
    """The keys of ``key``'s kind as a range ``[low, high)``: those that share its text
    up to the first ``:`` (every key, for a key with no ``:``)."""
    cut = key.find(":")
    if cut < 0:
        return "", "\U0010ffff"
    prefix = key[: cut + 1]
    return prefix, prefix[:-1] + ";"  # ";" sorts right after ":"


class SSOStates(Protocol):
    """Short-lived SSO state every hub of a cluster must see: pending logins (the browser
    may come back to another hub) and the ids of SAML assertions already used."""

    async def add(self, key: str, value: str, expires: float, now: float, cap: int) -> bool:
        """Store ``key`` unless it exists (:class:`Conflict`); False, storing nothing,
        when ``cap`` unexpired entries of its kind are stored already. The kind is the
        key up to its first ``:`` (``state:``, ``saml-assertion:``...; see
        :func:`sso_kind_range`): one kind filling up never blocks another. Atomic. An
        expired entry counts as absent: its key may be stored again (as if pruned first)."""
        ...

    async def take(self, key: str, now: float) -> str | None:
        """Remove ``key`` and return its value; None when missing or expired. Atomic:
        of two hubs taking one key, one gets it."""
        ...

    async def prune(self, now: float, limit: int) -> int:
        """Delete up to ``limit`` expired entries; how many."""
        ...


class Storage(Protocol):
    """The hub's state. Open with the engine's ``open`` (``hub.storage.open_storage``)."""

    #: "sqlite" or "postgresql"
    engine: str
    users: Users
    roles: Roles
    tokens: Tokens
    invites: Invites
    nodes: Nodes
    presence: PresenceTable
    locks: Locks
    login_guards: LoginGuards
    audit: AuditLog
    authorities: Authorities
    rotation: Rotation
    settings: Settings
    firmware: Firmware
    trusted_keys: TrustedKeys
    blobs: Blobs
    hubs: Hubs
    leases: Leases
    connectors: Connectors
    sso: SSOStates

    def changes(self) -> AsyncIterator[Change]:
        """A new subscription to the change feed: every :class:`Change` written through
        any hub from now on, in order per topic, until the iterator is closed. After a
        gap (a reconnect) it yields ``Change(topic, "*")`` for every topic."""
        ...

    async def check(self) -> None:
        """Integrity check at start (SQLite ``quick_check``; PostgreSQL: reachable and
        the schema current); :class:`StorageError` with one line on failure."""
        ...

    async def close(self) -> None: ...
