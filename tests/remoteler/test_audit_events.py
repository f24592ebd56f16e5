"""The audit event schema: ids, round trip, strict parsing of what arrives from a device."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from remoteler.audit import AuditEvent, EventType, events, make_event, new_event_id
from remoteler.audit.events import FIELD_TYPES


@pytest.fixture
def id_state(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ids made here with future times must not pin later ids of this process there."""
    monkeypatch.setattr(events, "_last_id", events._last_id)


def test_ids_are_strictly_increasing_and_time_ordered(id_state: None) -> None:
    ids = [new_event_id() for _ in range(5000)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(len(i) == 26 for i in ids)
    early, late = new_event_id(1_000_000.0), new_event_id(2_000_000_000.0)
    assert late > early
    # The first 10 characters are the millisecond timestamp, big-endian base32.
    assert new_event_id(2_000_000_001.0)[:10] > late[:10]


def test_ids_stay_increasing_when_the_clock_steps_back(id_state: None) -> None:
    a = new_event_id(2_100_000_000.0)
    b = new_event_id(1_000.0)
    assert b > a


def _samples() -> list[AuditEvent]:
    return [
        make_event(EventType.SESSION_START, node="n1", user="alice", login="pi", session_id="s1"),
        make_event(
            "session.end",
            node="n1",
            session_id="s1",
            exit_status=None,
            duration=1.5,
            bytes_in=3,
            bytes_out=4,
        ),
        make_event(EventType.EXEC, node="n1", command="ls -l", exit_code=0, extra={"a": [1]}),
        make_event(EventType.SESSION_DATA, node="n1", chunk=0, codec="zlib", data=b"\x00\xff"),
        make_event(EventType.FILE_TRANSFER, node="n1", path="/x", size=9, direction="upload"),
        make_event(EventType.PORT_FORWARD, node="n1", host="localhost", port=8080),
        make_event(EventType.AUDIT_DROPPED, node="n1", dropped=5, dropped_bytes=500),
        make_event(EventType.AUTH_FAILED, node="n1", reason="expired"),
        make_event(EventType.FIRMWARE_INSTALL, node="n1", rollout="r", version="1.0", slot="b"),
        make_event("widget.frobbed", node="n1", anything="goes"),  # a future type
    ]


@pytest.mark.parametrize("event", _samples(), ids=lambda e: e.type)
def test_round_trip_through_msgpack(event: AuditEvent) -> None:
    event = dataclasses.replace(event, seq=42)
    wire = msgpack.unpackb(msgpack.packb(event.to_wire(), use_bin_type=True), raw=False)
    assert set(wire) == {"id", "type", "time", "node", "user", "login", "session", "seq", "fields"}
    assert AuditEvent.from_wire(wire) == event


def test_make_event_fills_id_and_time() -> None:
    before = time.time()
    event = make_event(EventType.USER_LOGIN, node="hub", user="alice")
    assert before <= event.time <= time.time()
    assert event.type == "user.login" and type(event.type) is str
    assert event.seq == 0 and event.fields == {}
    assert make_event("join", node="x", now=123.0).time == 123.0


def _good() -> dict[str, Any]:
    return make_event(EventType.EXEC, node="n1", command="id", exit_code=1).to_wire()


BAD: list[tuple[str, Any]] = [
    ("not a map", ["id"]),
    ("no id", {k: v for k, v in _good().items() if k != "id"}),
    ("short id", {**_good(), "id": "01ABC"}),
    ("lowercase id", {**_good(), "id": _good()["id"].lower()}),
    ("id with U", {**_good(), "id": "0" * 25 + "U"}),
    ("id overflow", {**_good(), "id": "8" + "0" * 25}),
    ("id bytes", {**_good(), "id": _good()["id"].encode()}),
    ("type int", {**_good(), "type": 5}),
    ("type empty", {**_good(), "type": ""}),
    ("type odd", {**_good(), "type": "Exec; DROP"}),
    ("time str", {**_good(), "time": "now"}),
    ("time bool", {**_good(), "time": True}),
    ("time nan", {**_good(), "time": float("nan")}),
    ("time inf", {**_good(), "time": float("inf")}),
    ("time huge int", {**_good(), "time": 10**400}),
    ("node missing", {k: v for k, v in _good().items() if k != "node"}),
    ("node empty", {**_good(), "node": ""}),
    ("node long", {**_good(), "node": "n" * 1000}),
    ("user int", {**_good(), "user": 1}),
    ("session none", {**_good(), "session": None}),
    ("seq negative", {**_good(), "seq": -1}),
    ("seq float", {**_good(), "seq": 1.0}),
    ("seq bool", {**_good(), "seq": True}),
    ("fields list", {**_good(), "fields": [1]}),
    ("fields int key", {**_good(), "fields": {1: 2, "command": "x", "exit_code": 0}}),
    ("exec no command", {**_good(), "fields": {"exit_code": 0}}),
    ("exec bytes command", {**_good(), "fields": {"command": b"id", "exit_code": 0}}),
    ("exec str code", {**_good(), "fields": {"command": "id", "exit_code": "0"}}),
]


@pytest.mark.parametrize(("why", "wire"), BAD, ids=[b[0] for b in BAD])
def test_from_wire_rejects_malformed(why: str, wire: Any) -> None:
    with pytest.raises(ValueError):
        AuditEvent.from_wire(wire)


TYPED_BAD = [
    ("session.end", {"exit_status": 0, "duration": -1.0, "bytes_in": 0, "bytes_out": 0}),
    ("session.end", {"exit_status": 0, "duration": 1, "bytes_in": "0", "bytes_out": 0}),
    ("session.end", {"exit_status": 1.5, "duration": 1, "bytes_in": 0, "bytes_out": 0}),
    ("session.data", {"chunk": 0, "codec": "zlib", "data": "text"}),
    ("session.data", {"chunk": -1, "codec": "zlib", "data": b""}),
    ("auth.failed", {}),
    ("file.transfer", {"path": "/x", "size": 1, "direction": "sideways"}),
    ("port.forward", {"host": "h", "port": 70000}),
    ("port.forward", {"host": "h", "port": True}),
    ("audit.dropped", {"dropped": 1}),
    ("cert.create", {"ttl": 1, "logins": "pi"}),
]


@pytest.mark.parametrize(("type_", "fields"), TYPED_BAD)
def test_typed_fields_are_checked_on_make_and_parse(type_: str, fields: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=type_):
        make_event(type_, node="n1", **fields)
    wire = {**_good(), "type": type_, "fields": fields}
    with pytest.raises(ValueError, match=type_):
        AuditEvent.from_wire(wire)


def test_every_typed_type_is_an_event_type() -> None:
    assert set(FIELD_TYPES) <= {t.value for t in EventType}


def test_make_event_rejects_bad_envelope() -> None:
    with pytest.raises(ValueError, match="node"):
        make_event(EventType.SESSION_START, node="")
    with pytest.raises(ValueError, match="user"):
        make_event(EventType.SESSION_START, node="n", user=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="type"):
        make_event("Not A Type", node="n")


_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.binary()
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)
_keys = st.sampled_from(["id", "type", "time", "node", "user", "login", "session", "seq", "fields"])


@settings(max_examples=300, deadline=None)
@given(
    d=st.dictionaries(_keys | st.text(max_size=5) | st.integers(), _values, max_size=10),
    base=st.booleans(),
)
def test_fuzz_from_wire_raises_only_value_error(d: dict[Any, Any], base: bool) -> None:
    wire = {**_good(), **d} if base else d
    try:
        event = AuditEvent.from_wire(wire)
    except ValueError:
        return
    assert AuditEvent.from_wire(event.to_wire()) == event


@settings(max_examples=200, deadline=None)
@given(
    type_=st.sampled_from([t.value for t in EventType]),
    fields=st.dictionaries(st.sampled_from(["command", "data", "port", "size", "x"]), _values),
)
def test_fuzz_typed_fields_raise_only_value_error(type_: str, fields: dict[str, Any]) -> None:
    with contextlib.suppress(ValueError):
        AuditEvent.from_wire({**_good(), "type": type_, "fields": fields})
