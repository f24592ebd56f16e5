"""The audit event schema shared by the agent's outbox, the wire and the hub's store.

An event is a small frozen record. Its id is time-ordered (a ULID: 48-bit
millisecond timestamp + 80 random bits, Crockford base32) and unique, so the
hub can store a re-sent event idempotently on (node, id). Typed fields are
checked for the known types; unknown types and extra fields pass through, so a
newer agent never wedges its outbox against an older hub.
"""

from __future__ import annotations

import math
import re
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

__all__ = ["AuditEvent", "EventType", "make_event", "new_event_id"]


class EventType(StrEnum):
    USER_LOGIN = "user.login"
    CERT_CREATE = "cert.create"
    JOIN = "join"
    JOIN_FAILED = "join.failed"
    SESSION_START = "session.start"
    SESSION_END = "session.end"
    EXEC = "exec"
    SESSION_DATA = "session.data"
    # resumable sessions (docs/resume.md): the link went, came back, or never did
    SESSION_DETACHED = "session.detached"
    SESSION_RESUMED = "session.resumed"
    SESSION_ABANDONED = "session.abandoned"
    PORT_FORWARD = "port.forward"
    PORT_FORWARD_END = "port.forward.end"
    FILE_TRANSFER = "file.transfer"
    AUTH_FAILED = "auth.failed"
    TUNNEL_CONNECT = "tunnel.connect"
    TUNNEL_DISCONNECT = "tunnel.disconnect"
    AUDIT_DROPPED = "audit.dropped"
    # a damaged or lost device outbox (docs/audit.md "Corrupt or lost outbox")
    AUDIT_CORRUPT = "audit.corrupt"
    AUDIT_GAP = "audit.gap"
    AUDIT_SEQ_REUSED = "audit.seq_reused"
    ROLE_CREATED = "role.created"
    ROLE_DELETED = "role.deleted"
    # SSO connectors (docs/sso.md): created/updated or removed by tctl
    CONNECTOR_CREATED = "connector.created"
    CONNECTOR_DELETED = "connector.deleted"
    ROTATION_PHASE = "rotation.phase"
    LOCK_CREATED = "lock.created"
    LOCK_DELETED = "lock.deleted"
    # firmware roll-outs (docs/firmware-rollouts.md): the hub's, then the device's
    FIRMWARE_ROLLOUT_START = "firmware.rollout.start"
    FIRMWARE_ROLLOUT_STOP = "firmware.rollout.stop"
    FIRMWARE_ROLLOUT_DONE = "firmware.rollout.done"
    FIRMWARE_TRANSFER = "firmware.transfer"
    FIRMWARE_INSTALL = "firmware.install"
    FIRMWARE_INSTALLED = "firmware.installed"
    FIRMWARE_FAILED = "firmware.failed"
    FIRMWARE_ROLLBACK = "firmware.rollback"
    SERIAL_OPEN = "serial.open"
    SERIAL_CLOSE = "serial.close"
    SSH_FORWARD_START = "ssh.forward.start"
    SSH_FORWARD_END = "ssh.forward.end"
    NODE_UPDATED = "node.updated"
    #: a tctl change with no type of its own (user, token, node, trusted key); fields
    #: action, target, by (``tctl:NAME``), addr (docs/tctl.md)
    ADMIN_CHANGE = "admin.change"
    #: the device's clock is off the hub's by more than a minute (docs/tunnels.md)
    CLOCK_SKEW = "clock.skew"
    #: something a user did in the web console: fields action, remote_addr, and the
    #: action's own (target, login, ok, error...) (docs/web.md)
    WEB_ACTION = "web.action"


#: Node name used for events the hub records itself.
HUB_NODE = "hub"
#: Longest node, user, login or session id accepted from the wire.
MAX_NAME = 256

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_ID = re.compile(r"[0-7][0-9A-HJKMNP-TV-Z]{25}")
_TYPE = re.compile(r"[a-z][a-z0-9_.\-]{0,63}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_count(v: Any) -> bool:
    return _is_int(v) and v >= 0


def _is_opt_int(v: Any) -> bool:
    return v is None or _is_int(v)


def _is_number(v: Any) -> bool:
    """A finite int or float that fits a double (huge ints would overflow float())."""
    if isinstance(v, float):
        return math.isfinite(v)
    return _is_int(v) and abs(v) < 2**53


def _is_seconds(v: Any) -> bool:
    return _is_number(v) and v >= 0


def _is_str(v: Any) -> bool:
    return isinstance(v, str)


def _is_str_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


# (field, check, what the check wants), per known type: required, type-checked.
_Check = tuple[str, Any, str]


def _firmware_fields() -> dict[str, tuple[_Check, ...]]:
    rollout: _Check = ("rollout", _is_str, "a str (the roll-out id)")
    version: _Check = ("version", _is_str, "a str")
    reason: _Check = ("reason", _is_str, "a str")
    return {
        EventType.FIRMWARE_ROLLOUT_START: (rollout, version, ("nodes", _is_count, "an int")),
        EventType.FIRMWARE_ROLLOUT_STOP: (rollout, reason),
        EventType.FIRMWARE_ROLLOUT_DONE: (rollout,),
        EventType.FIRMWARE_TRANSFER: (
            rollout,
            version,
            ("size", _is_count, "a non-negative int"),
            ("resumed_from", _is_count, "a non-negative int"),
        ),
        EventType.FIRMWARE_INSTALL: (rollout, version, ("slot", _is_str, "a str")),
        EventType.FIRMWARE_INSTALLED: (rollout, version, ("slot", _is_str, "a str")),
        EventType.FIRMWARE_FAILED: (rollout, version, reason),
        EventType.FIRMWARE_ROLLBACK: (rollout, version, reason),
    }


FIELD_TYPES: dict[str, tuple[_Check, ...]] = {
    EventType.SESSION_END: (
        ("exit_status", _is_opt_int, "an int or None"),
        ("duration", _is_seconds, "a non-negative number of seconds"),
        ("bytes_in", _is_count, "a non-negative int"),
        ("bytes_out", _is_count, "a non-negative int"),
    ),
    EventType.EXEC: (
        ("command", _is_str, "a str"),
        ("exit_code", _is_opt_int, "an int or None"),
    ),
    EventType.SESSION_DATA: (
        ("chunk", _is_count, "a non-negative int"),
        ("codec", _is_str, "a str"),
        ("data", lambda v: isinstance(v, bytes), "bytes"),
    ),
    EventType.AUTH_FAILED: (("reason", _is_str, "a str"),),
    EventType.WEB_ACTION: (("action", _is_str, "a str"), ("remote_addr", _is_str, "a str")),
    EventType.SESSION_DETACHED: (("reason", _is_str, "a str"),),
    EventType.SESSION_RESUMED: (
        ("gap", _is_seconds, "a non-negative number of seconds"),
        ("bytes_replayed", _is_count, "a non-negative int"),
        ("resumes", _is_count, "a non-negative int"),
    ),
    EventType.SESSION_ABANDONED: (
        ("reason", _is_str, "a str"),
        ("grace", _is_seconds, "a non-negative number of seconds"),
    ),
    EventType.JOIN_FAILED: (
        ("name", _is_str, "a str (the node name asked for)"),
        ("remote_addr", _is_str, "a str"),
        ("reason", _is_str, "a str"),
    ),
    EventType.FILE_TRANSFER: (
        ("path", _is_str, "a str"),
        ("size", _is_count, "a non-negative int"),
        ("direction", lambda v: v in ("upload", "download"), "'upload' or 'download'"),
    ),
    EventType.PORT_FORWARD: (
        ("host", _is_str, "a str"),
        ("port", lambda v: _is_int(v) and 0 <= v <= 65535, "a port number (0-65535)"),
    ),
    EventType.PORT_FORWARD_END: (
        ("host", _is_str, "a str"),
        ("port", lambda v: _is_int(v) and 0 <= v <= 65535, "a port number (0-65535)"),
        ("bytes_in", _is_count, "a non-negative int"),
        ("bytes_out", _is_count, "a non-negative int"),
        ("duration", _is_seconds, "a non-negative number of seconds"),
    ),
    # Forward mode (docs/legacy-devices.md): the agent relays to the device's own sshd.
    EventType.SSH_FORWARD_START: (("target", _is_str, "a str"),),
    EventType.SSH_FORWARD_END: (
        ("target", _is_str, "a str"),
        ("bytes_in", _is_count, "a non-negative int"),
        ("bytes_out", _is_count, "a non-negative int"),
        ("duration", _is_seconds, "a non-negative number of seconds"),
    ),
    EventType.AUDIT_DROPPED: (
        ("dropped", _is_count, "a non-negative int"),
        ("dropped_bytes", _is_count, "a non-negative int"),
    ),
    EventType.AUDIT_CORRUPT: (
        ("events_salvaged", _is_count, "a non-negative int"),
        ("pages", _is_count, "a non-negative int"),
        ("pages_lost", _is_count, "a non-negative int"),
        ("moved_to", _is_str, "a str (the file kept aside)"),
    ),
    EventType.AUDIT_GAP: (
        (
            "reason",
            lambda v: v in ("missing", "empty", "seq_reused"),
            "'missing', 'empty' or 'seq_reused'",
        ),
        ("resumed_at", _is_count, "a non-negative int"),
    ),
    EventType.AUDIT_SEQ_REUSED: (
        ("seq", _is_count, "a non-negative int"),
        ("refused_id", _is_str, "a str"),
        ("stored_id", _is_str, "a str"),
    ),
    EventType.ROTATION_PHASE: (
        ("ca_type", lambda v: v in ("user", "host"), "'user' or 'host'"),
        ("phase", _is_str, "a str"),
    ),
    EventType.ROLE_CREATED: (
        ("name", _is_str, "a str"),
        ("spec", lambda v: isinstance(v, dict), "a map (the role as stored)"),
    ),
    EventType.ROLE_DELETED: (("name", _is_str, "a str"),),
    EventType.NODE_UPDATED: (
        ("name", _is_str, "a str"),
        ("recording", lambda v: v in ("off", "proxy"), "'off' or 'proxy'"),
    ),
    EventType.SERIAL_OPEN: (
        ("port", _is_str, "a str"),
        ("baud", _is_count, "a non-negative int"),
        ("mode", lambda v: v in ("rw", "read-only", ""), "'rw', 'read-only' or ''"),
        ("allowed", lambda v: isinstance(v, bool), "a bool"),
    ),
    EventType.SERIAL_CLOSE: (
        ("port", _is_str, "a str"),
        ("baud", _is_count, "a non-negative int"),
        ("mode", lambda v: v in ("rw", "read-only"), "'rw' or 'read-only'"),
        ("breaks", _is_count, "a non-negative int"),
        ("duration", _is_seconds, "a non-negative number of seconds"),
        ("bytes_in", _is_count, "a non-negative int"),
        ("bytes_out", _is_count, "a non-negative int"),
    ),
    EventType.CERT_CREATE: (
        ("ttl", _is_count, "a non-negative int"),
        ("logins", _is_str_list, "a list of str"),
    ),
    EventType.CLOCK_SKEW: (
        ("skew", _is_number, "a number of seconds (device minus hub)"),
        ("corrected", lambda v: isinstance(v, bool), "a bool"),
        ("message", _is_str, "a str"),
    ),
    **_firmware_fields(),
}


def check_fields(type: str, fields: Mapping[str, Any]) -> None:
    """Raise ValueError unless ``fields`` has the typed fields ``type`` requires."""
    for key in fields:
        if not isinstance(key, str):
            raise ValueError(f"{type} event: field names must be strings, got {key!r:.40}")
    for name, check, want in FIELD_TYPES.get(type, ()):
        if name not in fields:
            raise ValueError(f"{type} event: missing field {name!r}")
        if not check(fields[name]):
            raise ValueError(f"{type} event: field {name!r} must be {want}")


# -- ids ---------------------------------------------------------------------

_id_lock = threading.Lock()
_last_id = 0  # the previous id as a 128-bit int


def _encode_id(value: int) -> str:
    out = []
    for _ in range(26):
        out.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(out))


def new_event_id(now: float | None = None) -> str:
    """A 26-character, time-ordered id, strictly greater than the last one made here.

    Within one millisecond (or if the clock steps back) the previous id's random
    part is incremented, as monotonic ULIDs do, so ids sort in creation order.
    """
    global _last_id
    ms = int((time.time() if now is None else now) * 1000) & ((1 << 48) - 1)
    with _id_lock:
        value = (ms << 80) | secrets.randbits(80)
        if value <= _last_id:
            value = _last_id + 1
        _last_id = value
    return _encode_id(value)


# -- the event ------------------------------------------------------------------


@dataclass(frozen=True)
class AuditEvent:
    """One audit record; build it with :func:`make_event`, parse it with :meth:`from_wire`."""

    id: str
    """Unique, time-ordered (:func:`new_event_id`)."""
    type: str
    """An :class:`EventType` value (unknown types are carried, not checked)."""
    time: float
    """When it happened, Unix seconds."""
    node: str
    """Node id, or ``"hub"`` for events the hub records itself."""
    user: str = ""
    """Remoteler user, when one is involved."""
    login: str = ""
    """OS login on the node."""
    session_id: str = ""
    """Session the event belongs to."""
    seq: int = 0
    """The agent outbox's sequence number (order per node); 0 for hub events."""
    fields: Mapping[str, Any] = field(default_factory=dict)
    """Type-specific fields (see :data:`FIELD_TYPES`), plus any extra ones."""

    def to_wire(self) -> dict[str, Any]:
        """A msgpack-friendly map; :meth:`from_wire` reads it back."""
        return {
            "id": self.id,
            "type": self.type,
            "time": self.time,
            "node": self.node,
            "user": self.user,
            "login": self.login,
            "session": self.session_id,
            "seq": self.seq,
            "fields": dict(self.fields),
        }

    @classmethod
    def from_wire(cls, d: Any) -> AuditEvent:
        """Validate and build an event; raise ValueError (never anything else) if malformed."""
        if not isinstance(d, dict):
            raise ValueError("an audit event must be a map")
        event_id = d.get("id")
        if not isinstance(event_id, str) or not _ID.fullmatch(event_id):
            raise ValueError("audit event id must be a 26-character ULID")
        type_ = d.get("type")
        if not isinstance(type_, str) or not _TYPE.fullmatch(type_):
            raise ValueError(f"event {event_id}: bad type")
        when: Any = d.get("time")
        if not _is_number(when):
            raise ValueError(f"event {event_id}: time must be a finite number")
        names = {}
        for key in ("node", "user", "login", "session"):
            value = d.get(key, "")
            if not isinstance(value, str) or len(value) > MAX_NAME:
                raise ValueError(f"event {event_id}: {key} must be a string of at most {MAX_NAME}")
            names[key] = value
        if not names["node"]:
            raise ValueError(f"event {event_id}: node is missing")
        seq = d.get("seq", 0)
        if not _is_count(seq):
            raise ValueError(f"event {event_id}: seq must be a non-negative int")
        fields = d.get("fields", {})
        if not isinstance(fields, dict):
            raise ValueError(f"event {event_id}: fields must be a map")
        check_fields(type_, fields)
        return cls(
            id=event_id,
            type=type_,
            time=float(when),
            node=names["node"],
            user=names["user"],
            login=names["login"],
            session_id=names["session"],
            seq=seq,
            fields=dict(fields),
        )


def make_event(
    type: EventType | str,
    *,
    node: str,
    user: str = "",
    login: str = "",
    session_id: str = "",
    now: float | None = None,
    **fields: Any,
) -> AuditEvent:
    """A new event with a fresh id; raise ValueError if a typed field is missing or wrong.

    Give the outbox's ``seq`` afterwards with ``dataclasses.replace(event, seq=n)``.
    """
    type_ = str(type)
    if not _TYPE.fullmatch(type_):
        raise ValueError(f"bad event type {type_!r}")
    names = {"node": node, "user": user, "login": login, "session_id": session_id}
    for key, value in names.items():
        if not isinstance(value, str):
            raise ValueError(f"{type_} event: {key} must be a str")
    if not node:
        raise ValueError(f"{type_} event: node is missing")
    check_fields(type_, fields)
    when = time.time() if now is None else float(now)
    return AuditEvent(
        id=new_event_id(when),
        type=type_,
        time=when,
        node=node,
        user=user,
        login=login,
        session_id=session_id,
        fields=fields,
    )
