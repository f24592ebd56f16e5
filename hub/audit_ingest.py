"""The hub's end of an agent's ``audit`` channel: store each batch, then ack it.

The ack goes out only after the batch is committed, and lists every id of the
batch, new or already stored: the agent may then delete them all. If the hub
dies between commit and ack, the agent re-sends and the idempotent insert
turns the duplicate into a no-op, so delivery is exactly-once in effect.

Past the node's quota (:mod:`hub.audit_quota`) only the batch's first events
are stored and acked (each event costs one token per started 128 KiB), with a
retry-after for the rest (or a ``refused`` when none is stored); a node that
keeps sending before its retry-after gets its channel closed. Refusals are
logged once per channel, with the totals at close.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import msgpack

from hub.audit_quota import EVENT_UNIT, AuditQuotas, event_cost
from hub.audit_store import AuditBackend
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


def _pack(wire_event: object) -> bytes:
    """An event's encoded size is measured by encoding it again (~4 us)."""
    body: bytes = msgpack.packb(wire_event, use_bin_type=True)
    return body


async def serve_audit_channel(
    channel: Channel,
    node_id: str,
    store: AuditBackend,
    quotas: AuditQuotas | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Serve one audit channel until the agent closes it; never raises (bar cancellation).

    ``node_id`` is the tunnel's authenticated node: every event is stored under it.
    A malformed message is logged once and the channel closed; nothing of it is acked.
    """
    reader = MessageReader()
    fields = {"node_id": node_id, "channel": channel.channel_id}
    stored = refused = early = 0
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
                    stored += await store.insert(node_id, events)
                    channel.write(encode_message(ack_message([e.id for e in events])))
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
                    stored += await store.insert(node_id, kept)
                    reply = ack_message([e.id for e in kept], grant.retry_after)
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
            extra={**fields, "stored": stored, "refused": refused, "early": early},
        )
