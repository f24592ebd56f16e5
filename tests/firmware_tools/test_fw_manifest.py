"""The manifest: field checks and the one canonical encoding."""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_tools.bundle import BundleTampered, Manifest

GOOD = (
    b'{"created":1.5,"install_hook":"bin/i.sh","key_id":"SHA256:'
    + b"A" * 43
    + b'","min_agent_version":"0","name":"n","sha256":"'
    + b"0" * 64
    + b'","size":0,"targets":{"a":"b*"},"version":"1.0-rc.1"}'
)


def with_field(name: str, value: object) -> bytes:
    doc = json.loads(GOOD)
    doc[name] = value
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def test_round_trip() -> None:
    manifest = Manifest.from_bytes(GOOD)
    assert manifest.to_bytes() == GOOD
    assert manifest.targets == {"a": "b*"}
    assert Manifest(**manifest.to_dict()) == manifest


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("size", True),
        ("size", -1),
        ("size", 1.0),
        ("size", 1 << 41),
        ("created", 2),
        ("created", -1.0),
        ("version", "1.0+build"),
        ("min_agent_version", 1),
        ("name", ""),
        ("sha256", "0" * 63),
        ("sha256", "A" * 64),
        ("targets", {}),
        ("targets", {"a": "^x$"}),
        ("targets", {"a": 1}),
        ("targets", ["a"]),
        ("install_hook", "/bin/sh"),
        ("install_hook", "a/../b"),
        ("install_hook", "a//b"),
        ("key_id", "SHA256:short"),
        ("extra", "field"),
    ],
)
def test_refused_fields(name: str, value: object) -> None:
    with pytest.raises(BundleTampered, match="malformed"):
        Manifest.from_bytes(with_field(name, value))


@pytest.mark.parametrize(
    "data",
    [
        GOOD.replace(b'"size":0', b'"size": 0'),  # whitespace
        GOOD.replace(b'"created":1.5', b'"created":1.50'),  # another spelling of the value
        GOOD.replace(b'{"created":1.5,', b'{"created":1.5,"created":1.5,'),  # duplicate key
        GOOD.replace(b'"name":"n"', b'"name":"\\u006e"'),  # escaped ASCII
    ],
)
def test_only_the_canonical_encoding(data: bytes) -> None:
    with pytest.raises(BundleTampered, match="not canonical"):
        Manifest.from_bytes(data)


def test_nan_and_junk_are_refused() -> None:
    for data in (
        GOOD.replace(b'"created":1.5', b'"created":NaN'),
        GOOD.replace(b'"name":"n"', b'"name":"\xc3\xa9"'),
        b"[" * 10_000,
        b"",
    ):
        with pytest.raises(BundleTampered):
            Manifest.from_bytes(data)
    with pytest.raises(ValueError, match="bad name"):
        dataclasses.replace(Manifest.from_bytes(GOOD), name="a b")


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=200), st.integers(0, 10_000))
def test_mutated_manifest_never_parses_wrongly(junk: bytes, where: int) -> None:
    pos = where % (len(GOOD) + 1)
    for data in (GOOD[:pos] + junk + GOOD[pos:], GOOD[:pos] + junk):
        try:
            parsed = Manifest.from_bytes(data)
        except BundleTampered:
            continue
        assert parsed.to_bytes() == data  # only canonical bytes are ever accepted
