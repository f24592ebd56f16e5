"""Send the audit outbox to the hub over one tunnel channel, deleting only what it acked.

Protocol on channel kind ``audit`` (opened by the agent, meta ``{}``), each
message a length-prefixed msgpack map (:mod:`remoteler.audit.stream`):

* agent → hub ``{"t": "batch", "events": [event.to_wire(), ...]}``
* hub → agent ``{"t": "ack", "ids": [...]}`` once the hub has committed them.
* over the node's quota at the hub: an ``ack`` of the batch's first events with
  ``retry_after``, or ``{"t": "refused", "retry_after": s, ...}``. The rest stays
  in the outbox; the forwarder sends nothing more until ``retry_after`` plus a
  jitter of up to 20 % (at least 0.1 s) has passed, then goes on from the oldest
  (logged at info once per channel).
* events refused for a reused seq (the ack's ``reused`` ids: this device lost
  its outbox and numbered again from a seq the hub already holds) are renumbered
  from the ack's ``seq_floor`` on, after every seq handed out, an ``audit.gap``
  (``reason`` ``seq_reused``) is recorded, and they are sent again at once. If
  the hub refuses renumbered events again (its floor is wrong), they are left as
  they are and sent after the retry-after: never a tight loop.

One batch is in flight at a time. Anything not acked stays in the outbox and is
sent again, oldest first, on the next channel (one the hub closed is opened
again after :data:`REOPEN_FIRST`) or tunnel; the hub's insert is idempotent on
(node, id), so a batch sent twice is stored once.

An agent with tunnels to several hubs of a cluster forwards over one of them at
a time (:func:`forward_on_any`): when that tunnel goes down the forwarder moves
to another that is up, and the batch in flight is sent again there; the hubs
share one database, so it is still stored once. A hub that refuses the audit
channel (an older hub, a node cut off by that hub's quota) has the forwarder move
to another tunnel that is up, and that tunnel is passed over for
:data:`REFUSED_AVOID` seconds; with no other, it stays and reopens with the
usual backoff.

A storage error in the outbox (``SQLITE_FULL`` on the delete after an ack, an I/O
error reading a batch) never ends the forwarder: it is logged once (warning, then
debug until it clears, then info), and the same operation is retried after
:data:`STORAGE_RETRY_FIRST` seconds, doubling up to :data:`STORAGE_RETRY_MAX`, on
the same channel, so delivery resumes by itself once space is freed. Acked ids
whose delete failed when the channel closes are simply sent again later.
Any other error (an undecodable row, a bug) is not retried: it is logged with its
traceback and the channel is given up, to be opened again after the usual wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sqlite3
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from edge_agent.outbox import Outbox
from edge_agent.waiting import first
from remoteler.audit.events import AuditEvent, EventType, make_event
from remoteler.audit.stream import (
    MessageReader,
    Reply,
    batch_message,
    encode_message,
    parse_reply,
)
from remoteler.protocol import AUDIT_KIND
from remoteler.wire.aio import Channel, Tunnel
from remoteler.wire.exceptions import ChannelClosedError, ChannelOpenError, TunnelClosed

__all__ = ["forward_on_any", "retry_delay", "run_forwarder"]

log = logging.getLogger("remoteler.agent.forwarder")


def retry_delay(retry_after: float, rand: float) -> float:
    """Seconds to wait after the hub asked for ``retry_after``: never less, plus a jitter
    of up to 20 % (at least 0.1 s) so refused nodes do not come back in step.
    ``rand`` is uniform in [0, 1)."""
    base = max(0.0, retry_after)
    return base + rand * max(0.1, 0.2 * base)


#: Wait before reopening an audit channel the hub closed (or refused) while the
#: tunnel stays up, doubled after each channel that delivered nothing, up to
#: :data:`REOPEN_MAX`; a jitter of +-20 %. Without it the outbox would wait for the
#: next tunnel, which on a steady link may be days.
REOPEN_FIRST = 5.0
REOPEN_MAX = 60.0
#: Seconds a tunnel whose hub refused the audit channel is passed over by
#: :func:`forward_on_any` while another tunnel is up.
REFUSED_AVOID = REOPEN_MAX
#: Wait before retrying an outbox operation that failed (disk full, I/O error),
#: doubled after each failure up to :data:`STORAGE_RETRY_MAX`; +-20 % jitter.
STORAGE_RETRY_FIRST = 0.5
STORAGE_RETRY_MAX = 5.0

#: What is retried: a full disk or an I/O error (``SQLITE_FULL``, ``SQLITE_IOERR``,
#: ``SQLITE_BUSY`` are ``OperationalError``s). Corruption and bugs are not.
STORAGE_ERRORS = (sqlite3.OperationalError, OSError)

T = TypeVar("T")


async def _retry_storage(
    op: Callable[[], Awaitable[T]], what: str, closed: asyncio.Event, default: T
) -> T:
    """Run ``op`` until it succeeds or the channel closes (then ``default``), retrying
    storage errors with backoff; logs the first failure and the recovery. Anything else
    (an undecodable row, a bug) is raised: retrying would not mend it."""
    wait, failures = STORAGE_RETRY_FIRST, 0
    while True:
        try:
            result = await op()
        except STORAGE_ERRORS as exc:
            failures += 1
            log.log(
                logging.WARNING if failures == 1 else logging.DEBUG,
                "audit outbox: could not %s: %s: %s; retrying every %.1f-%.0fs until it works",
                what,
                type(exc).__name__,
                exc,
                STORAGE_RETRY_FIRST,
                STORAGE_RETRY_MAX,
            )
            await first(asyncio.sleep(wait * (0.8 + 0.4 * random.random())), closed.wait())
            wait = min(STORAGE_RETRY_MAX, wait * 2)
            if closed.is_set():
                return default
            continue
        if failures:
            log.info("audit outbox: %s works again after %d failed tries", what, failures)
        return result


async def run_forwarder(
    outbox: Outbox,
    tunnel: Tunnel,
    *,
    max_count: int = 500,
    max_bytes: int = 512 * 1024,
    ack_timeout: float = 60,
    elsewhere: Callable[[], bool] = lambda: False,
) -> None:
    """Forward the outbox until the tunnel closes; never raises on peer input.

    Start it again on each new tunnel. If the hub closes the audit channel (a
    storage error, garbage, its quota's cut-off) or refuses to open one (an older
    hub, or a node cut off by its quota), the channel is opened again after
    :data:`REOPEN_FIRST` seconds, backing off to :data:`REOPEN_MAX`; but after a
    refusal ``elsewhere`` is asked first, and if it says another tunnel can take
    over, this returns at once.
    """
    wait = REOPEN_FIRST
    refusals = 0
    while not tunnel.closed.is_set():
        delivered, opened = 0, False
        try:
            channel = await tunnel.open_channel(AUDIT_KIND, {})
        except ChannelOpenError as exc:
            refusals += 1
            log.log(
                logging.WARNING if refusals == 1 else logging.DEBUG,
                "hub refused the audit channel: %s; trying again in %.0fs or on the next tunnel",
                exc,
                wait,
            )
            if elsewhere():
                log.info("hub refused the audit channel; forwarding over another tunnel")
                return
        except TunnelClosed:
            return
        else:
            opened = True
            try:
                delivered = await _forward(outbox, channel, max_count, max_bytes, ack_timeout)
            except Exception:  # a bug must not stop delivery until the next tunnel
                log.exception("audit forwarder failed; opening another channel")
        if tunnel.closed.is_set():
            return
        if delivered:
            wait = REOPEN_FIRST
        delay = wait * (0.8 + 0.4 * random.random())
        if opened:
            log.info("hub closed the audit channel; opening another in %.1fs", delay)
        await first(asyncio.sleep(delay), tunnel.closed.wait())
        wait = min(REOPEN_MAX, wait * 2)


async def forward_on_any(
    outbox: Outbox,
    ups: Callable[[], list[Tunnel]],
    changed: asyncio.Event,
    on: Callable[[Tunnel | None], None] = lambda _tunnel: None,
) -> None:
    """Forward the outbox over one tunnel at a time, for ever (cancel to stop).

    ``ups`` lists the tunnels up now, best first; ``changed`` is set whenever one
    comes up or goes down; ``on`` is told which tunnel forwards now. The first
    tunnel whose hub did not refuse the audit channel in the last
    :data:`REFUSED_AVOID` seconds is taken (if every one did, the one refused
    longest ago). Only the one :func:`run_forwarder` this runs ever sends, so two
    tunnels never forward at once.
    """
    #: tunnel -> monotonic time its hub last refused the audit channel
    refused: dict[Tunnel, float] = {}

    def avoided(tunnel: Tunnel, now: float) -> bool:
        return now - refused.get(tunnel, -REFUSED_AVOID) < REFUSED_AVOID

    while True:
        changed.clear()  # before picking: a tunnel up meanwhile is not missed
        tunnels = ups()
        for gone in set(refused) - set(tunnels):
            del refused[gone]
        if not tunnels:
            await changed.wait()
            continue
        now = time.monotonic()
        tunnel = next(
            (t for t in tunnels if not avoided(t, now)),
            min(tunnels, key=lambda t: refused.get(t, 0.0)),
        )

        def elsewhere(tunnel: Tunnel = tunnel) -> bool:
            """The hub of ``tunnel`` refused: is another tunnel up and not refused?"""
            now = refused[tunnel] = time.monotonic()
            return any(t is not tunnel and not avoided(t, now) for t in ups())

        on(tunnel)
        try:
            await run_forwarder(outbox, tunnel, elsewhere=elsewhere)
        except Exception:  # a bug must not stop delivery for good
            log.exception("audit forwarder failed; starting again")
            await asyncio.sleep(1.0)
        finally:
            on(None)


async def _forward(
    outbox: Outbox, channel: Channel, max_count: int, max_bytes: int, ack_timeout: float
) -> int:
    """Forward over one channel until it closes; return how many events were acked."""
    acks: asyncio.Queue[Reply | None] = asyncio.Queue()
    closed = asyncio.Event()
    acked = [0]
    reader = asyncio.create_task(_read_acks(channel, acks, closed))
    try:
        await _send_loop(outbox, channel, acks, closed, max_count, max_bytes, ack_timeout, acked)
    except ChannelClosedError:
        pass
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        channel.close()
    return acked[0]


async def _send_loop(
    outbox: Outbox,
    channel: Channel,
    acks: asyncio.Queue[Reply | None],
    closed: asyncio.Event,
    max_count: int,
    max_bytes: int,
    ack_timeout: float,
    acked: list[int],
) -> None:
    waited = False
    moved: set[str] = set()  # ids renumbered after the last reply that named any
    while not closed.is_set():
        while not acks.empty():  # late acks of a batch sent again after a timeout
            if (late := acks.get_nowait()) is None:
                return
            if late.ids:
                acked[0] += await _ack(outbox, late.ids, closed)
        outbox.changed.clear()  # before reading, so an append after the read still wakes us
        events: list[AuditEvent] = await _retry_storage(
            lambda: outbox.batch(max_count, max_bytes), "read a batch", closed, []
        )
        if not events:
            await first(outbox.changed.wait(), closed.wait())
            continue
        try:
            message = encode_message(batch_message(events))
        except ValueError as exc:  # one event larger than the hub accepts: cannot be sent
            log.error("audit event %s cannot be forwarded: %s", events[0].id, exc)
            await closed.wait()
            return
        channel.write(message)
        await channel.drain()
        try:
            reply = await asyncio.wait_for(acks.get(), ack_timeout)
        except TimeoutError:
            log.warning(
                "no audit ack within %.0fs; sending from the oldest unacked again", ack_timeout
            )
            continue
        if reply is None:  # channel closed: what was not acked is sent on the next tunnel
            return
        if reply.ids:
            acked[0] += await _ack(outbox, reply.ids, closed)
        # Renumbered events refused again: the hub's floor is wrong; wait, never spin.
        again = not moved.isdisjoint(reply.reused)
        renumbered = bool(reply.reused) and not again and await _renumber(outbox, reply)
        if renumbered:
            moved = set(reply.reused)
        settled = len(reply.ids) + len(reply.reused) >= len(events)
        if renumbered and settled:
            continue  # refused only for reused seqs, now renumbered: send them at once
        if reply.retry_after is not None:  # the hub's quota: the rest waits in the outbox
            delay = retry_delay(reply.retry_after, random.random())
            # info once per channel (a long drain past the quota waits every few seconds)
            log.log(
                logging.DEBUG if waited else logging.INFO,
                "hub audit quota: %d of %d events stored, sending the rest in %.1fs",
                len(reply.ids),
                len(events),
                delay,
            )
            waited = True
            await first(asyncio.sleep(delay), closed.wait())


async def _ack(outbox: Outbox, ids: list[str], closed: asyncio.Event) -> int:
    """Delete what the hub acked, retrying storage errors (e.g. ``SQLITE_FULL``)."""
    return await _retry_storage(lambda: outbox.ack(ids), "delete acked events", closed, 0)


async def _renumber(outbox: Outbox, reply: Reply) -> bool:
    """The hub refused events whose seq it already holds under other ids (this device
    lost its outbox): number them from the hub's ``seq_floor`` on, after every seq
    handed out, and record ``audit.gap``; True if any was renumbered."""
    try:
        moved = await outbox.renumber(reply.reused, reply.seq_floor)
        if moved is None:
            return False
        count, start = moved
        log.warning(
            "hub refused %d audit events: their seq is already stored (this device lost"
            " its outbox?); renumbered from seq %d and sent again",
            count,
            start,
        )
        await outbox.append(
            make_event(
                EventType.AUDIT_GAP,
                node=outbox.node,
                reason="seq_reused",
                resumed_at=start,
                renumbered=count,
            )
        )
    except Exception as exc:  # storage failure: they wait for the retry-after instead
        log.error("audit events not renumbered: %s: %s", type(exc).__name__, exc)
        return False
    return True


async def _read_acks(
    channel: Channel, acks: asyncio.Queue[Reply | None], closed: asyncio.Event
) -> None:
    reader = MessageReader()
    try:
        while data := await channel.read():
            try:
                messages = reader.feed(data)
            except ValueError as exc:
                log.warning("audit channel: undecodable data from the hub, closing: %s", exc)
                return
            for message in messages:
                try:
                    acks.put_nowait(parse_reply(message))
                except ValueError as exc:
                    log.warning("audit channel: ignoring a message from the hub: %s", exc)
    finally:
        closed.set()
        acks.put_nowait(None)
