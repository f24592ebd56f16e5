from __future__ import annotations

import pytest

from remoteler.recording import CODEC, SessionRecorder, decode_chunk


def test_chunks_keep_bytes_and_timing() -> None:
    rec = SessionRecorder(start=100.0, max_chunk_bytes=10, max_chunk_seconds=5)
    chunks = []
    for i, t in enumerate([100.0, 100.5, 101.25]):
        c = rec.output(f"line{i}\n".encode(), t)
        if c:
            chunks.append(c)
    last = rec.flush()
    assert last is not None
    chunks.append(last)
    frames = [f for c in chunks for f in decode_chunk(CODEC, c)]
    assert frames == [(0, b"line0\n"), (500, b"line1\n"), (1250, b"line2\n")]
    assert rec.total_bytes == 18 and rec.chunks == len(chunks) == 2


def test_time_based_cut() -> None:
    rec = SessionRecorder(start=0.0, max_chunk_seconds=1.0)
    assert rec.output(b"a", 0.1) is None
    assert not rec.due(0.5) and rec.due(1.2)
    assert rec.output(b"b", 1.2) is not None


@pytest.mark.parametrize("data", [b"", b"garbage", b"x\x9c\x03\x00"])
def test_damaged_chunks_raise_value_error(data: bytes) -> None:
    with pytest.raises(ValueError):
        decode_chunk(CODEC, data)
    with pytest.raises(ValueError):
        decode_chunk("other", data)
