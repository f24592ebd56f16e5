"""SSH wire encoding (RFC 4251 §5) as used by OpenSSH keys and certificates.

Private to the ``ca`` package: the reader raises :class:`CAError` on every
malformed input so that parsers built on it never leak ``IndexError`` or
``struct.error`` to callers.
"""

from __future__ import annotations

import struct

from .errors import CAError

UINT64_MAX = 0xFFFF_FFFF_FFFF_FFFF


def uint32(value: int) -> bytes:
    return struct.pack(">I", value)


def uint64(value: int) -> bytes:
    return struct.pack(">Q", value)


def string(value: bytes | str) -> bytes:
    if isinstance(value, str):
        value = value.encode("utf-8")
    return uint32(len(value)) + value


def mpint(value: int) -> bytes:
    """Encode a non-negative integer as an SSH mpint (RFC 4251 §5)."""
    if value < 0:
        raise ValueError("negative mpint")
    if value == 0:
        return uint32(0)
    raw = value.to_bytes((value.bit_length() + 8) // 8, "big")
    return string(raw)


class Reader:
    """Sequential reader over an SSH-encoded buffer; every error is a CAError."""

    def __init__(self, data: bytes, what: str) -> None:
        self._data = data
        self._pos = 0
        self._what = what

    @property
    def position(self) -> int:
        return self._pos

    def _fail(self, detail: str) -> CAError:
        return CAError(f"malformed {self._what}: {detail}; re-issue or re-copy it")

    def _take(self, n: int) -> bytes:
        if n > len(self._data) - self._pos:
            raise self._fail("truncated")
        chunk = self._data[self._pos : self._pos + n]
        self._pos += n
        return chunk

    def uint32(self) -> int:
        value: int = struct.unpack(">I", self._take(4))[0]
        return value

    def uint64(self) -> int:
        value: int = struct.unpack(">Q", self._take(8))[0]
        return value

    def string(self) -> bytes:
        return self._take(self.uint32())

    def text(self) -> str:
        raw = self.string()
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self._fail("text field is not UTF-8") from None

    def mpint(self) -> int:
        raw = self.string()
        if raw and raw[0] & 0x80:
            raise self._fail("negative mpint")
        return int.from_bytes(raw, "big")

    def at_end(self) -> bool:
        return self._pos == len(self._data)

    def expect_end(self) -> None:
        if not self.at_end():
            raise self._fail("trailing bytes")
