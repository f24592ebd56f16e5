"""The hub list a hub pushes to its agents (remoteler/hublist.py): round trip, caps,
and a fuzzed decoder that raises only ValueError."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from remoteler.hublist import MAX_BODY, MAX_HUBS, HubList, decode

HUBS = (("hub-a", "10.0.0.1:3080"), ("hub-b", "[fd00::2]:3080"), ("hub-c", "c.example:443"))


def pack(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def body(**over: object) -> dict[str, object]:
    return {"hub_id": "hub-b", "hubs": [list(h) for h in HUBS], "connections": 2, **over}


def test_round_trip_and_a_stable_digest() -> None:
    hubs = HubList("hub-b", HUBS, 2)
    again = decode(hubs.encode())
    assert again == hubs
    assert again.digest() == hubs.digest() and len(hubs.digest()) == 16
    assert HubList("hub-a", HUBS, 2).digest() != hubs.digest()  # the sender counts
    assert HubList("hub-b", HUBS, 3).digest() != hubs.digest()
    assert hubs.ids() == ("hub-a", "hub-b", "hub-c")
    assert hubs.addr_of("hub-c") == "c.example:443" and hubs.addr_of("x") is None


def test_build_sorts_and_decode_accepts_any_order() -> None:
    built = HubList.build("hub-b", reversed(HUBS), 2)
    assert built.hubs == HUBS
    assert decode(pack(body(hubs=[list(h) for h in reversed(HUBS)]))) == built


def test_unknown_keys_are_ignored() -> None:
    assert decode(pack(body(later={"x": 1}))) == HubList("hub-b", HUBS, 2)


@pytest.mark.parametrize(
    "over",
    [
        {"hub_id": "hub-z"},  # the sender is not in its own list
        {"hub_id": ""},
        {"hub_id": 7},
        {"hub_id": "x" * 65},
        {"hub_id": "hub\n"},
        {"hubs": []},
        {"hubs": "hub-a"},
        {"hubs": [["hub-a"]]},
        {"hubs": [["hub-b", "h:1"], ["hub-b", "h:2"]]},  # one id twice
        {"hubs": [["hub-b", 3080]]},
        {"hubs": [["hub-b", "no-port"]]},
        {"hubs": [["hub-b", "h:0"]]},
        {"hubs": [["hub-b", "h:65536"]]},
        {"hubs": [["hub-b", "h:\uff18\uff10"]]},  # non-ASCII (fullwidth) digits
        {"hubs": [["hub-b", "::1:80"]]},  # IPv6 without brackets
        {"hubs": [["hub-b", ":80"]]},
        {"hubs": [["hub-b", "h h:80"]]},
        {"hubs": [["hub-b", "h" * 253 + ":80"]]},  # 256 characters
        {"connections": 0},
        {"connections": 9},
        {"connections": True},
        {"connections": 2.0},
        {"connections": None},
    ],
)
def test_malformed_lists_raise_value_error(over: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        decode(pack(body(**over)))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",  # never used in msgpack
        pack([1, 2]),
        pack({1: "x"}),  # a map key that is not a string
        pack(body()) + b"\x00",  # trailing bytes
        pack({"hub_id": b"hub-b"}),
        msgpack.packb(msgpack.ExtType(1, b"x")),
        b"\x91" * 10_000 + b"\xc0",  # deep nesting
    ],
)
def test_not_a_list_at_all(data: bytes) -> None:
    with pytest.raises(ValueError):
        decode(data)


def test_caps() -> None:
    most = [[f"hub-{i:03d}", f"h{i}.example:3080"] for i in range(MAX_HUBS)]
    assert len(decode(pack(body(hub_id="hub-000", hubs=most))).hubs) == MAX_HUBS
    with pytest.raises(ValueError):
        decode(pack(body(hub_id="hub-000", hubs=[*most, ["hub-zzz", "z:1"]])))
    # 256 hubs with names of 220 characters together fit in the body cap ...
    fits = [[f"{i:03d}" + "i" * 61, f"{i:03d}" + "a" * 150 + ":65535"] for i in range(MAX_HUBS)]
    biggest = HubList.build(fits[0][0], fits, 8)
    assert len(biggest.encode()) <= MAX_BODY
    assert decode(biggest.encode()) == biggest
    with pytest.raises(ValueError):  # ... and no byte more is read
        decode(biggest.encode() + b" " * (MAX_BODY + 1 - len(biggest.encode())))
    # the longest ids and addresses of the most hubs do not: never built, never decoded
    long = [[f"{i:03d}" + "i" * 61, f"{i:03d}" + "a" * 246 + ":65535"] for i in range(MAX_HUBS)]
    with pytest.raises(ValueError, match="at most 65536 bytes"):
        HubList.build(long[0][0], long, 8)
    with pytest.raises(ValueError):
        decode(pack(body(hub_id=long[0][0], hubs=long)))


def test_the_constructor_checks_too() -> None:
    with pytest.raises(ValueError):
        HubList("hub-a", (("hub-b", "b:1"), ("hub-a", "a:1")), 1)  # not sorted
    with pytest.raises(ValueError):
        HubList.build("hub-a", [("hub-a", "a:1")], 0)


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=80),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=20,
)
entries = st.lists(
    st.tuples(
        st.text(min_size=0, max_size=70),
        st.one_of(
            st.text(max_size=30),
            st.builds(lambda h, p: f"{h}:{p}", st.text(max_size=20), st.integers(-5, 70000)),
        ),
    ),
    max_size=6,
)


@settings(max_examples=300, deadline=None)
@given(
    hub_id=st.one_of(st.text(max_size=70), msgpack_values),
    hubs=st.one_of(entries.map(lambda es: [list(e) for e in es]), msgpack_values),
    count=st.one_of(st.integers(-2, 12), msgpack_values),
    extra=st.dictionaries(st.text(max_size=8), msgpack_values, max_size=2),
)
def test_fuzzed_bodies_decode_or_raise_value_error(
    hub_id: object, hubs: object, count: object, extra: dict[str, object]
) -> None:
    data = pack({**extra, "hub_id": hub_id, "hubs": hubs, "connections": count})
    try:
        got = decode(data)
    except ValueError:
        return
    assert decode(got.encode()) == got  # what decodes is valid and round-trips


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.integers(0, 400), st.binary(max_size=8))
def test_mutated_bytes_decode_or_raise_value_error(junk: bytes, at: int, patch: bytes) -> None:
    good = HubList("hub-b", HUBS, 2).encode()
    for data in (junk, good[:at] + patch + good[at + len(patch) :], good[:at]):
        try:
            got = decode(data)
        except ValueError:
            continue
        assert decode(got.encode()) == got
