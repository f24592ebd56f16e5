"""The certificates of an SSO login sealed for the tsh that asked (remoteler/ssoseal.py)."""

from __future__ import annotations

import pytest

from remoteler.errors import AuthError
from remoteler.ssoseal import decode_key, encode_key, new_key, seal, unseal

PAYLOAD = {"user": "alice", "ssh_cert": "ssh-ed25519-cert-v01@openssh.com AAAA", "expires": 1}


def test_sealed_answer_opens_with_the_key_and_request_id() -> None:
    key = new_key()
    box = seal(key, "req-1", PAYLOAD)
    assert "alice" not in box and "ssh-ed25519" not in box
    assert unseal(decode_key(encode_key(key)), "req-1", box) == PAYLOAD


@pytest.mark.parametrize("what", ["key", "request", "bytes"])
def test_another_key_request_or_a_changed_byte_does_not_open(what: str) -> None:
    key = new_key()
    box = seal(key, "req-1", PAYLOAD)
    if what == "key":
        key = new_key()
    request = "req-2" if what == "request" else "req-1"
    if what == "bytes":
        box = box[:20] + ("A" if box[20] != "A" else "B") + box[21:]
    with pytest.raises(AuthError, match="did not decrypt"):
        unseal(key, request, box)


@pytest.mark.parametrize("text", ["", "abc", encode_key(b"short")])
def test_client_keys_must_be_32_bytes(text: str) -> None:
    with pytest.raises(ValueError):
        decode_key(text)
