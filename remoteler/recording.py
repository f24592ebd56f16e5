"""Session recording, sans-I/O: output bytes with their timing, cut into compressed chunks.

A chunk is ``zlib(msgpack([[offset_ms, data], ...]))`` with codec
``zlib-msgpack-v1``; each becomes one ``session.data`` audit event, so recordings
travel (and survive being offline) exactly like every other event.
"""

from __future__ import annotations

import zlib
from typing import Any

import msgpack

CODEC = "zlib-msgpack-v1"
MAX_CHUNK_BYTES = 64 * 1024
MAX_CHUNK_SECONDS = 1.0
#: zlib level: terminal output still shrinks ~100x at level 1, three times faster
#: than level 6 (this runs on the agent's event loop for every output byte).
LEVEL = 1
#: Bytes tried first: output that does not shrink (binary, already compressed) is
#: stored (level 0, a copy) instead of costing ~27 ms per MiB to compress for nothing.
SAMPLE = 4096


def compress_chunk(raw: bytes) -> bytes:
    """``raw`` as a zlib stream: level 1, or stored when a sample does not shrink."""
    level = LEVEL
    if len(raw) > 2 * SAMPLE and len(zlib.compress(raw[:SAMPLE], LEVEL)) > SAMPLE * 9 // 10:
        level = 0
    return zlib.compress(raw, level)


class SessionRecorder:
    def __init__(
        self,
        start: float,
        max_chunk_bytes: int = MAX_CHUNK_BYTES,
        max_chunk_seconds: float = MAX_CHUNK_SECONDS,
    ) -> None:
        self.start = start
        self.max_chunk_bytes = max_chunk_bytes
        self.max_chunk_seconds = max_chunk_seconds
        self._frames: list[list[Any]] = []
        self._size = 0
        self._first: float | None = None
        self.chunks = 0
        self.total_bytes = 0

    @property
    def pending(self) -> bool:
        return bool(self._frames)

    def output(self, data: bytes, now: float) -> bytes | None:
        """Record ``data`` seen at ``now``; return a finished chunk when one is due."""
        if not data:
            return None
        offset_ms = max(0, int((now - self.start) * 1000))
        self._frames.append([offset_ms, bytes(data)])
        self._size += len(data)
        self.total_bytes += len(data)
        if self._first is None:
            self._first = now
        if self._size >= self.max_chunk_bytes or now - self._first >= self.max_chunk_seconds:
            return self.flush()
        return None

    def due(self, now: float) -> bool:
        """True when a pending chunk is older than ``max_chunk_seconds``."""
        return self._first is not None and now - self._first >= self.max_chunk_seconds

    def flush(self) -> bytes | None:
        if not self._frames:
            return None
        chunk = compress_chunk(msgpack.packb(self._frames, use_bin_type=True))
        self._frames, self._size, self._first = [], 0, None
        self.chunks += 1
        return chunk


def decode_chunk(codec: str, data: bytes) -> list[tuple[int, bytes]]:
    """Frames of one chunk; ValueError on an unknown codec or damaged data."""
    if codec != CODEC:
        raise ValueError(f"unknown recording codec {codec!r}")
    try:
        frames = msgpack.unpackb(zlib.decompress(data), raw=False)
    except (zlib.error, ValueError, msgpack.UnpackException) as exc:
        raise ValueError(f"damaged recording chunk: {exc}") from None
    out = []
    for item in frames if isinstance(frames, list) else []:
        if (
            isinstance(item, list)
            and len(item) == 2
            and isinstance(item[0], int)
            and isinstance(item[1], bytes)
        ):
            out.append((item[0], item[1]))
        else:
            raise ValueError("damaged recording chunk: bad frame")
    return out
