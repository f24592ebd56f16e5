"""Seed a stopped agent's audit outbox with a backlog, for tests of its delivery."""

from __future__ import annotations

import asyncio
from pathlib import Path

from edge_agent.outbox import Outbox
from remoteler.audit.events import EventType, make_event


def seed_outbox(path: Path, node_id: str, n: int, pad: int = 0) -> dict[str, int]:
    """Append ``n`` ``exec`` events of user ``seed`` (``pad`` bytes of command each) to
    the outbox at ``path`` (its agent stopped); return event id -> outbox seq."""

    async def go() -> dict[str, int]:
        outbox = await Outbox.open(path, node=node_id)
        try:
            events = [
                make_event(
                    EventType.EXEC,
                    node=node_id,
                    user="seed",
                    login="seed",
                    session_id=f"seed-{i // 100}",
                    command=f"seed {i} " + "x" * pad,
                    exit_code=i % 7,
                )
                for i in range(n)
            ]
            stored = await asyncio.gather(*(outbox.append(e) for e in events))
        finally:
            await outbox.close()
        return {e.id: e.seq for e in stored}

    return asyncio.run(go())
