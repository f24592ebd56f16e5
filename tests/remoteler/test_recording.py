from __future__ import annotations

import os
import zlib

import pytest

from remoteler.recording import CODEC, SessionRecorder, compress_chunk, decode_chunk


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


def test_text_is_compressed_and_incompressible_output_is_stored() -> None:
    text = b"Nov 25 12:00:01 gw kernel: eth0 link up 1000 Mb/s\n" * 1000
    packed = compress_chunk(text)
    assert zlib.decompress(packed) == text and len(packed) < len(text) // 50
    noise = os.urandom(64 * 1024)
    stored = compress_chunk(noise)
    assert zlib.decompress(stored) == noise
    # stored (level 0): the bytes appear verbatim after the zlib header
    assert noise[:1000] in stored and len(stored) < len(noise) + 64


def test_random_output_replays_exactly() -> None:
    rec = SessionRecorder(start=100.0, max_chunk_bytes=16 * 1024)
    noise = os.urandom(20 * 1024)
    chunk = rec.output(noise, 100.5)
    assert chunk is not None
    assert decode_chunk(CODEC, chunk) == [(500, noise)]
