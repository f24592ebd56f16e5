"""``tsh play SESSION_ID``: replay a recorded session with its original timing."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from remoteler.errors import NodeError
from remoteler.recording import decode_chunk

#: Pauses longer than this are shortened when replaying, as most players do.
MAX_IDLE_SECONDS = 5.0


def session_frames(events: Sequence[dict[str, Any]]) -> list[tuple[int, bytes]]:
    """All output frames of a session, in order, from its ``session.data`` events."""
    chunks = []
    for event in events:
        if event.get("type") != "session.data":
            continue
        fields = event.get("fields") or {}
        chunks.append(
            (int(fields.get("chunk", 0)), str(fields.get("codec", "")), fields.get("data"))
        )
    frames: list[tuple[int, bytes]] = []
    for _, codec, data in sorted(chunks, key=lambda c: c[0]):
        if isinstance(data, bytes):
            frames.extend(decode_chunk(codec, data))
    return frames


async def replay(frames: Sequence[tuple[int, bytes]], speed: float, out_fd: int) -> None:
    previous = 0
    for offset, data in frames:
        pause = min((offset - previous) / 1000 / speed, MAX_IDLE_SECONDS)
        if pause > 0:
            await asyncio.sleep(pause)
        previous = offset
        view = memoryview(data)
        while view:
            view = view[os.write(out_fd, view) :]


def dump(frames: Sequence[tuple[int, bytes]], fmt: str) -> None:
    if fmt == "text":
        sys.stdout.buffer.write(b"".join(d for _, d in frames))
        sys.stdout.buffer.flush()
        return
    print(
        json.dumps(
            [
                {
                    "offset_ms": offset,
                    "text": data.decode("utf-8", "replace"),
                    "data_b64": base64.b64encode(data).decode(),
                }
                for offset, data in frames
            ],
            indent=1,
        )
    )


def check_found(events: Sequence[dict[str, Any]], session_id: str) -> None:
    if not events:
        raise NodeError(
            f"no recording of session {session_id!r} on the hub yet; check the id "
            "(tctl audit search --type session.start) or wait for the device to reconnect"
        )
