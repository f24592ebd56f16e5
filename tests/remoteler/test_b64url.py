"""Base64url without padding (remoteler/b64url.py)."""

from __future__ import annotations

import pytest

from remoteler import b64url


@pytest.mark.parametrize("size", range(0, 7))
def test_round_trip_without_padding(size: int) -> None:
    data = bytes(range(250, 250 - size, -1))
    text = b64url.encode(data)
    assert "=" not in text and "+" not in text and "/" not in text
    assert b64url.decode(text) == data
    assert b64url.decode(text + "=" * (-len(text) % 4)) == data  # padded also reads


def test_rfc_7515_example() -> None:
    # RFC 7515 appendix C: the octets 3, 236, 255, 224, 193 encode as "A-z_4ME"
    assert b64url.encode(bytes([3, 236, 255, 224, 193])) == "A-z_4ME"
    assert b64url.decode("A-z_4ME") == bytes([3, 236, 255, 224, 193])


def test_not_base64url_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        b64url.decode("a")
