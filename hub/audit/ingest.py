"""The hub's end of an agent's ``audit`` channel: store each batch, then ack it.

The ack goes out only after the batch is committed, and lists every id of the
batch, new or already stored: the agent may then delete them all. If the hub
dies between commit and ack, the agent re-sends and the idempotent insert
turns the duplicate into a no-op, so delivery is exactly-once in effect.

Past the node's quota (:mod:`hub.audit.quota`) only the batch's first events
are stored and acked (each event costs one token per started 128 KiB), with a
retry-after for the rest (or a ``refused`` when none is stored); a node that
keeps sending before its retry-after gets its channel closed. Refusals are
logged once per channel, with the totals at close.

An event whose seq the node already stored under another id (an agent that lost
its outbox and numbered from 1 again) is neither stored nor acked: the ack lists
the rest of the batch, names the refused ids (``reused``) with the node's highest
stored seq + 1 (``seq_floor``), and a retry-after of :data:`REUSED_SEQ_RETRY`. A
current agent renumbers the refused events from ``seq_floor`` on and sends them
again at once; an older one keeps them and re-sends them slowly instead of in a
loop. The first such event on a channel is logged and recorded as a hub
``audit.seq_reused`` event.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import msgpack

from hub.audit.quota import EVENT_UNIT, AuditQuotas, event_cost
from hub.storage.api import AuditLog, Inserted
from remoteler.audit.events import AuditEvent, EventType, make_event
from remoteler.audit.stream import (
    MessageReader,
    ack_message,
    encode_message,
    parse_batch,
    refused_message,
)
from remoteler.wire.aio import Channel
from remoteler.wire.exceptions import ChannelClosedError, TunnelClosed

log = logging.getLogger("remoteler.hub.audit")

READ_SIZE = 65536
#: Seconds an agent waits before re-sending events refused for a reused seq.
REUSED_SEQ_RETRY = 30.0


def _pack(wire_event: object) -> bytes:
    """An event's encoded size is measured by encoding it again (~4 us)."""
    body: bytes = msgpack.packb(wire_event, use_bin_type=True)
    return body


async def serve_audit_channel(
    channel: Channel,
    node_id: str,
    store: AuditLog,
    quotas: AuditQuotas | None = None,
    clock: Callable[[], float] = time.monotonic,
    counted: Callable[[int], None] | None = None,
) -> None:
    """Serve one audit channel until the agent closes it; never raises (bar cancellation).

    ``counted`` is told how many events each insert stored (the hub's metrics).

    ``node_id`` is the tunnel's authenticated node: every event is stored under it.
    A malformed message is logged once and the channel closed; nothing of it is acked.
    """
    reader = MessageReader()
    fields = {"node_id": node_id, "channel": channel.channel_id}
    stored = refused = early = reused = 0

    async def insert(events: list[AuditEvent]) -> tuple[list[str], float | None, Inserted]:
        """Store; return the ids to ack, the retry-after reused seqs ask for, the result."""
        nonlocal stored, reused
        result: Inserted = await store.insert_checked(node_id, events)
        stored += result.inserted
        if counted is not None:
            counted(result.inserted)
        if not result.reused:
            return [e.id for e in events], None, result
        if not reused:
            await _note_reused(store, node_id, result, fields)
        reused += len(result.reused)
        refused_ids = {r.id for r in result.reused}
        return [e.id for e in events if e.id not in refused_ids], REUSED_SEQ_RETRY, result

    def ack(ids: list[str], retry: float | None, result: Inserted) -> dict[str, Any]:
        return ack_message(ids, retry, [r.id for r in result.reused], result.seq_floor)

    try:
        while data := await channel.read(READ_SIZE):
            messages = reader.feed(data)
            for message, size in zip(messages, reader.sizes, strict=True):
                if quotas is not None and (too_soon := quotas.early(node_id, clock())):
                    early += 1
                    assert too_soon.retry_after is not None
                    if too_soon.close:
                        log.warning(
                            "audit channel closed: the node ignores its quota's retry-after",
                            extra={**fields, "retry_after": round(too_soon.retry_after, 1)},
                        )
                        return
                    reply = refused_message(too_soon.retry_after, "sent before its retry-after")
                    channel.write(encode_message(reply))
                    await channel.drain()
                    continue
                events = parse_batch(message)
                grant = None
                if quotas is not None and quotas.config.enabled:
                    # by size too (a batch within one unit: one token each, no encoding)
                    costs = None
                    if size > EVENT_UNIT:
                        costs = [event_cost(len(_pack(e))) for e in message["events"]]
                    grant = quotas.take(node_id, len(events), clock(), costs)
                if grant is None or grant.retry_after is None:
                    ids, retry, result = await insert(events)
                    channel.write(encode_message(ack(ids, retry, result)))
                    await channel.drain()
                    continue
                if not refused:
                    log.info(
                        "audit quota reached: events refused with a retry-after",
                        extra={**fields, "retry_after": round(grant.retry_after, 1)},
                    )
                kept = events[: grant.accepted]
                refused += len(events) - len(kept)
                if kept:
                    ids, retry, result = await insert(kept)
                    reply = ack(ids, max(grant.retry_after, retry or 0), result)
                else:
                    reply = refused_message(grant.retry_after, "node audit quota reached")
                channel.write(encode_message(reply))
                await channel.drain()
    except ValueError as exc:
        log.warning("audit stream refused: %s", exc, extra=fields)
    except (ChannelClosedError, TunnelClosed):
        pass  # the agent re-sends what it did not see acked
    except Exception as exc:  # storage failure: nothing acked, the agent retries later
        log.error("audit batch not stored: %s: %s", type(exc).__name__, exc, extra=fields)
    finally:
        channel.close()
        log.debug(
            "audit channel closed",
            extra={
                **fields,
                "stored": stored,
                "refused": refused,
                "early": early,
                "reused_seq": reused,
            },
        )


async def _note_reused(
    store: AuditLog, node_id: str, result: Inserted, fields: dict[str, object]
) -> None:
    """Log and audit (once per channel) the first event refused for a reused seq."""
    first = result.reused[0]
    log.warning(
        "audit events refused: seq already stored under another id (did the device lose"
        " its outbox?); they stay on the device",
        extra={**fields, "seq": first.seq, "id": first.id, "stored_id": first.stored_id},
    )
    await store.record(
        make_event(
            EventType.AUDIT_SEQ_REUSED,
            node=node_id,
            seq=first.seq,
            refused_id=first.id,
            stored_id=first.stored_id,
            refused=len(result.reused),
        )
    )
