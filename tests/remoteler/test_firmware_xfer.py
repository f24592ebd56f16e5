"""The firmware transfer core without sockets: two cores pumped in memory."""

from __future__ import annotations

import contextlib
import hashlib

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from remoteler.audit.stream import encode_message
from remoteler.firmware_xfer import (
    CHUNK,
    AgentTransfer,
    Chunk,
    Finished,
    HubTransfer,
    Offer,
    ProtocolError,
    Refused,
    ResumeRequested,
    Status,
    TokenBucket,
    XferState,
    parse_rate,
)

BUNDLE = bytes(range(256)) * 1000  # 256,000 bytes: 4 chunks
SHA = hashlib.sha256(BUNDLE).hexdigest()


def _hub() -> HubTransfer:
    return HubTransfer("r1", b"header", len(BUNDLE), SHA)


def _pump_data(hub: HubTransfer, agent: AgentTransfer, staged: bytearray) -> list[object]:
    """Send every chunk the hub wants; the agent writes them into ``staged``."""
    seen: list[object] = []
    while hub.wants_data:
        hub.send_chunk(BUNDLE[hub.position : hub.position + hub.wants_data])
        for event in agent.receive_data(hub.data_to_send()):
            seen.append(event)
            if isinstance(event, Chunk):
                if event.offset == 0:
                    staged.clear()
                assert len(staged) == event.offset
                staged += event.data
    for event in agent.receive_data(hub.data_to_send()):
        seen.append(event)
    return seen


def _offer(hub: HubTransfer, agent: AgentTransfer) -> Offer:
    (offer,) = agent.receive_data(hub.data_to_send())
    assert isinstance(offer, Offer)
    return offer


def _resume(hub: HubTransfer, agent: AgentTransfer, staged: bytes) -> ResumeRequested:
    agent.resume(len(staged), hashlib.sha256(staged).hexdigest())
    (req,) = hub.receive_data(agent.data_to_send())
    assert isinstance(req, ResumeRequested)
    return req


def test_fresh_transfer_then_final_status() -> None:
    hub, agent = _hub(), AgentTransfer()
    offer = _offer(hub, agent)
    assert (offer.size, offer.sha256, offer.rollout) == (len(BUNDLE), SHA, "r1")
    assert offer.header == b"header" and offer.force is False
    req = _resume(hub, agent, b"")
    assert req.offset == 0
    hub.start_from(0)
    staged = bytearray()
    events = _pump_data(hub, agent, staged)
    assert bytes(staged) == BUNDLE
    assert isinstance(events[-1], Finished)
    assert sum(isinstance(e, Chunk) for e in events) == 4
    assert all(len(e.data) <= CHUNK for e in events if isinstance(e, Chunk))
    agent.status("installing", progress=len(BUNDLE))
    agent.status("installed", progress=len(BUNDLE))
    statuses = hub.receive_data(agent.data_to_send())
    assert [s.state for s in statuses if isinstance(s, Status)] == ["installing", "installed"]
    assert hub.state is XferState.DONE and agent.state is XferState.DONE


def test_resume_from_a_matching_prefix_sends_only_the_rest() -> None:
    hub, agent = _hub(), AgentTransfer()
    _offer(hub, agent)
    staged = bytearray(BUNDLE[:100_000])
    req = _resume(hub, agent, bytes(staged))
    assert hashlib.sha256(BUNDLE[: req.offset]).hexdigest() == req.prefix_sha256
    hub.start_from(req.offset)
    events = _pump_data(hub, agent, staged)
    assert bytes(staged) == BUNDLE
    assert min(e.offset for e in events if isinstance(e, Chunk)) == 100_000
    assert hub.resumed_from == 100_000


def test_a_bad_prefix_hash_restarts_from_zero() -> None:
    hub, agent = _hub(), AgentTransfer()
    _offer(hub, agent)
    staged = bytearray(b"x" * 100_000)  # the agent's partial file is not this bundle
    req = _resume(hub, agent, bytes(staged))
    assert hashlib.sha256(BUNDLE[: req.offset]).hexdigest() != req.prefix_sha256
    hub.start_from(0)
    events = _pump_data(hub, agent, staged)
    assert bytes(staged) == BUNDLE
    assert next(e.offset for e in events if isinstance(e, Chunk)) == 0
    assert hub.resumed_from == 0


def test_everything_staged_already_gets_just_the_end() -> None:
    hub, agent = _hub(), AgentTransfer()
    _offer(hub, agent)
    req = _resume(hub, agent, BUNDLE)
    hub.start_from(req.offset)
    assert hub.wants_data == 0
    assert agent.receive_data(hub.data_to_send()) == [Finished()]


def test_resume_past_the_bundle_is_a_protocol_error() -> None:
    hub = _hub()
    hub.data_to_send()
    msg = encode_message({"t": "resume", "offset": len(BUNDLE) + 1, "prefix_sha256": SHA})
    with pytest.raises(ProtocolError, match="past the bundle"):
        hub.receive_data(msg)
    assert hub.state is XferState.FAILED
    with pytest.raises(ProtocolError):
        hub.receive_data(b"")


def test_data_past_the_offered_size_is_refused_by_the_agent() -> None:
    small = HubTransfer("r1", b"h", 10, hashlib.sha256(b"0123456789").hexdigest())
    agent = AgentTransfer()
    agent.receive_data(small.data_to_send())
    agent.resume(0, hashlib.sha256(b"").hexdigest())
    agent.data_to_send()
    with pytest.raises(ProtocolError, match="past the offered size"):
        agent.receive_data(encode_message({"t": "data", "offset": 0, "data": b"x" * 11}))


def test_oversized_chunk_and_message_are_refused() -> None:
    hub, agent = _hub(), AgentTransfer()
    _offer(hub, agent)
    _resume(hub, agent, b"")
    with pytest.raises(ProtocolError):
        agent.receive_data(encode_message({"t": "data", "offset": 0, "data": b"x" * (CHUNK + 1)}))
    fresh = AgentTransfer()
    with pytest.raises(ProtocolError, match="exceeds"):
        fresh.receive_data((10 << 20).to_bytes(4, "big"))


def test_a_gap_in_the_data_is_refused() -> None:
    hub, agent = _hub(), AgentTransfer()
    _offer(hub, agent)
    _resume(hub, agent, b"")
    agent.receive_data(encode_message({"t": "data", "offset": 0, "data": b"a" * 10}))
    with pytest.raises(ProtocolError, match="expected 10"):
        agent.receive_data(encode_message({"t": "data", "offset": 20, "data": b"a"}))


def test_early_end_and_out_of_turn_messages_are_refused() -> None:
    hub, agent = _hub(), AgentTransfer()
    with pytest.raises(ProtocolError, match="out of turn"):
        AgentTransfer().receive_data(encode_message({"t": "end"}))
    _offer(hub, agent)
    _resume(hub, agent, b"")
    with pytest.raises(ProtocolError, match="end after 0"):
        agent.receive_data(encode_message({"t": "end"}))
    with pytest.raises(ProtocolError, match="resume out of turn"):
        h = _hub()
        h.start_from(0)
        h.receive_data(encode_message({"t": "resume", "offset": 0, "prefix_sha256": SHA}))


def test_refusal_and_unknown_state() -> None:
    hub, agent = _hub(), AgentTransfer()
    _offer(hub, agent)
    agent.refuse("no firmware key configured on this device")
    assert hub.receive_data(agent.data_to_send()) == [
        Refused("no firmware key configured on this device")
    ]
    other = _hub()
    with pytest.raises(ProtocolError, match="unknown firmware state"):
        other.receive_data(encode_message({"t": "status", "state": "pwned", "progress": 0}))


def test_one_byte_at_a_time() -> None:
    hub, agent = _hub(), AgentTransfer()
    wire = hub.data_to_send()
    events = [e for i in range(len(wire)) for e in agent.receive_data(wire[i : i + 1])]
    assert [type(e) for e in events] == [Offer]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_never_raises_anything_but_protocol_error(data: bytes) -> None:
    for core in (_hub(), AgentTransfer()):
        with contextlib.suppress(ProtocolError):
            core.receive_data(data)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["t", "offset", "data", "size", "sha256", "rollout", "state", "header"]),
        st.one_of(
            st.integers(-(2**63), 2**64 - 1), st.binary(max_size=8), st.text(max_size=8), st.none()
        ),
    )
)
def test_random_maps_never_raise_anything_but_protocol_error(msg: dict[str, object]) -> None:
    body = msgpack.packb(msg, use_bin_type=True)
    for core in (_hub(), AgentTransfer()):
        with contextlib.suppress(ProtocolError):
            core.receive_data(len(body).to_bytes(4, "big") + body)


def test_token_bucket_caps_the_rate() -> None:
    bucket = TokenBucket(rate=1000, burst=100, now=0.0)
    assert bucket.delay(100, 0.0) == 0.0  # the burst
    assert bucket.delay(500, 0.0) == pytest.approx(0.5)
    # after waiting, the debt is paid off at the rate
    assert bucket.delay(100, 0.6) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError):
        TokenBucket(rate=0)


def test_parse_rate() -> None:
    assert parse_rate("256KiB/s") == 256 * 1024
    assert parse_rate("1MB/s") == 1_000_000
    assert parse_rate("5000") == 5000
    for bad in ("fast", "0", "-1KiB/s", "1TB/s"):
        with pytest.raises(ValueError):
            parse_rate(bad)
