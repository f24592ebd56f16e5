from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from remoteler import rpc
from remoteler.errors import AccessDenied, error_from_code


def test_request_roundtrip() -> None:
    msg = rpc.encode({"id": 7, "method": "ping", "params": {"a": 1}})
    assert rpc.parse_request(msg) == (7, "ping", {"a": 1})


@pytest.mark.parametrize(
    "data",
    [
        "text",
        b"\xc1",
        msgpack.packb([1, 2]),
        msgpack.packb({"id": True, "method": "x"}),
        msgpack.packb({"id": 1, "method": 5}),
        msgpack.packb({"id": 1, "method": "x", "params": []}),
        b"\x00" * (rpc.MAX_RPC_MESSAGE + 1),
    ],
)
def test_bad_requests_raise_format_error(data: bytes | str) -> None:
    with pytest.raises(rpc.RpcFormatError):
        rpc.parse_request(data)


@given(st.binary(max_size=256))
def test_random_bytes_only_raise_format_error(data: bytes) -> None:
    with contextlib.suppress(rpc.RpcFormatError):
        rpc.parse_request(data)


def test_errors_travel_by_code() -> None:
    msg = rpc.decode(rpc.error_message(3, AccessDenied("no")))
    err = error_from_code(msg["error"]["code"], msg["error"]["message"])
    assert isinstance(err, AccessDenied) and str(err) == "no"
