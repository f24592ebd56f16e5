"""The hub's end of an agent's ``audit`` channel: store each batch, then ack it.

The ack goes out only after the batch is committed, and lists every id of the
batch, new or already stored: the agent may then delete them all. If the hub
dies between commit and ack, the agent re-sends and the idempotent insert
turns the duplicate into a no-op, so delivery is exactly-once in effect.
"""

from __future__ import annotations

import logging

from hub.audit_store import AuditBackend
from remoteler.audit.stream import MessageReader, ack_message, encode_message, parse_batch
from remoteler.wire.aio import Channel
from remoteler.wire.exceptions import ChannelClosedError, TunnelClosed

log = logging.getLogger("remoteler.hub.audit")

READ_SIZE = 65536


async def serve_audit_channel(channel: Channel, node_id: str, store: AuditBackend) -> None:
    """Serve one audit channel until the agent closes it; never raises (bar cancellation).

    ``node_id`` is the tunnel's authenticated node: every event is stored under it.
    A malformed message is logged once and the channel closed; nothing of it is acked.
    """
    reader = MessageReader()
    fields = {"node_id": node_id, "channel": channel.channel_id}
    stored = 0
    try:
        while data := await channel.read(READ_SIZE):
            for message in reader.feed(data):
                events = parse_batch(message)
                stored += await store.insert(node_id, events)
                channel.write(encode_message(ack_message([e.id for e in events])))
                await channel.drain()
    except ValueError as exc:
        log.warning("audit stream refused: %s", exc, extra=fields)
    except (ChannelClosedError, TunnelClosed):
        pass  # the agent re-sends what it did not see acked
    except Exception as exc:  # storage failure: nothing acked, the agent retries later
        log.error("audit batch not stored: %s: %s", type(exc).__name__, exc, extra=fields)
    finally:
        channel.close()
        log.debug("audit channel closed", extra={**fields, "stored": stored})
