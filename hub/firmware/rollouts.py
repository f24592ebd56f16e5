"""The running hub's roll-out orchestrator: push bundles to agents over their tunnels.

``tctl firmware push`` writes a roll-out into the hub's storage (any hub's, when
several share one database); this loop reads the running ones when the storage's
change feed says firmware changed, when a transfer ends, and every ``interval``
seconds (offline canaries' timeouts, retries). Per running roll-out:

* a canary that ends ``failed`` or ``rolled-back`` stops the roll-out: no other
  node is offered the bundle;
* until every canary is ``installed`` only canaries are offered it; then the rest;
* at most ``max_parallel`` transfers at once, each node's offer claimed first
  (:meth:`hub.storage.api.Firmware.claim`: of several hubs holding a tunnel of the
  node, one offers); nodes offline now show as
  ``offline since ...`` and are offered the bundle when they connect; a canary
  offline for longer than the roll-out's canary timeout is replaced by another
  online node, or the roll-out stops saying so (:mod:`hub.firmware.presence`);
* once every node is final the roll-out is ``done``.

In a cluster every hub runs this loop, but only one makes the roll-out's
decisions: the holder of the ``firmware-orchestration`` lease
(:attr:`FirmwareRollouts.may_orchestrate`, hub/app.py) stops a roll-out on a failed
canary or an unreadable bundle, marks nodes offline and online, replaces or gives
up on offline canaries (from the cluster's presence: a node is online when any hub
holds its tunnel) and finishes a roll-out. Every hub, holder or not, runs the
transfers of the nodes whose tunnels it holds, in the current wave: canaries
first, the rest only once every canary is installed, none while a canary has
failed (the holder is about to stop the roll-out); the claim decides which hub
when several hold a tunnel of the node.

A transfer is one ``firmware`` channel (LOW priority: interactive sessions go
first) run by :class:`remoteler.firmware_xfer.HubTransfer`, with an optional
token-bucket cap; the bytes come from the bundle's blob (``storage.blobs``). A cut
link leaves the node where it was; the next offer continues from what the agent
staged, once the hub has checked its hash.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import time
from collections.abc import Callable
from typing import Any

from hub.api.tunnels import TunnelRegistry
from hub.storage.api import Blobs, NotFound, Rollout, RolloutNode, Storage, StorageError
from remoteler.audit.events import HUB_NODE, EventType, make_event
from remoteler.firmware_xfer import (
    HubTransfer,
    ProtocolError,
    Refused,
    ResumeRequested,
    Status,
    TokenBucket,
    XferState,
)
from remoteler.protocol import FIRMWARE_KIND
from remoteler.wire.aio import Channel, Tunnel
from remoteler.wire.codes import OpenFailure
from remoteler.wire.exceptions import ChannelClosedError, ChannelOpenError, TunnelClosed

__all__ = ["FirmwareRollouts"]

log = logging.getLogger("remoteler.hub.firmware")

#: Node states that stop a roll-out when a canary reaches them.
CANARY_FAILURES = frozenset({"failed", "rolled-back"})
#: Seconds between two looks at the running roll-outs when nothing wakes the loop.
POLL_INTERVAL = 1.0
#: Fewest seconds between two looks (each write of a transfer's progress, on any hub,
#: wakes the loop), or ``interval`` if shorter.
MIN_GAP = 0.5
#: Seconds before offering again to a node whose transfer broke off.
RETRY_AFTER = 2.0
READ_SIZE = 64 * 1024
#: Seconds an agent may stay silent on a firmware channel (its install hook and
#: health check run 300 s + 60 s at most; it reports before each).
IDLE_TIMEOUT = 900.0
#: Seconds between two reads of the cluster's presence by the orchestrating hub (other
#: hubs write their leases every 5 s: reading more often shows nothing new).
PRESENCE_EVERY = 5.0


class BundleUnreadable(Exception):
    """The hub cannot read the roll-out's bundle from its storage: retrying cannot help."""


class FirmwareRollouts:
    """Built and run (:meth:`run`) by hub/app.py on the hub's :class:`Storage`."""

    def __init__(
        self,
        storage: Storage,
        registry: TunnelRegistry,
        audit: Any,
        interval: float = POLL_INTERVAL,
    ) -> None:
        self.storage = storage
        self.store = storage.firmware
        self.blobs: Blobs = storage.blobs
        self.registry = registry
        self.audit = audit
        self.interval = interval
        #: (rollout, node id) -> its transfer task
        self._inflight: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._retry_at: dict[tuple[str, str], float] = {}
        self._wake = asyncio.Event()
        self._headers: dict[str, bytes] = {}
        #: node id -> last heartbeat (wall clock) of an offline node, read once from the storage
        self._last_seen: dict[str, float | None] = {}
        #: wall clock when this hub began watching roll-outs (its downtime is not a canary's)
        self._watching_since = time.time()
        #: whether this hub makes the roll-out level decisions (module docstring): the
        #: holder of the cluster's ``firmware-orchestration`` lease (hub/app.py)
        self.may_orchestrate: Callable[[], bool] = lambda: True
        #: node ids whose tunnel another hub holds (live presence leases), and when read
        self._elsewhere: set[str] = set()
        self._elsewhere_at = float("-inf")

    async def run(self) -> None:
        """Until cancelled: follow the running roll-outs (then :meth:`close`)."""
        self._watching_since = time.time()
        watch = asyncio.ensure_future(self._watch())
        try:
            while True:
                self._wake.clear()
                try:
                    await self.tick()
                except Exception:
                    log.exception("firmware roll-out step failed; will retry")
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.interval):
                        await self._wake.wait()
                await asyncio.sleep(min(MIN_GAP, self.interval))
        finally:
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)
            await self.close()

    async def _watch(self) -> None:
        """Wake the loop on a firmware change written through any hub (a push, a stop,
        another hub's progress); a gap (``"*"``) wakes it too."""
        while True:
            changes = self.storage.changes()
            try:
                async for change in changes:
                    if change.topic == "firmware":
                        self._wake.set()
            except StorageError as exc:
                log.warning("firmware change feed lost: %s; reading every %g s", exc, self.interval)
            finally:
                with contextlib.suppress(Exception):
                    await changes.aclose()  # type: ignore[attr-defined]
            await asyncio.sleep(self.interval)
            self._wake.set()  # what changed meanwhile: read it all again

    async def close(self) -> None:
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._inflight.clear()

    async def tick(self) -> None:
        running = await self.store.rollouts("running")
        if running and self.may_orchestrate():
            await self._read_presence()
        ids: set[str] = set()
        for rollout in running:
            nodes = await self.store.nodes(rollout.id)
            ids.update(n.node_id for n in nodes)
            await self._step(rollout, nodes)
        for node_id in [k for k in self._last_seen if k not in ids]:
            del self._last_seen[node_id]  # its roll-outs ended
        live = {r.id for r in running}
        for (rollout_id, _node), task in list(self._inflight.items()):
            if rollout_id not in live:  # stopped (tctl firmware stop, a canary): no more bytes
                task.cancel()
        for key in [k for k in self._retry_at if k[0] not in live]:
            del self._retry_at[key]

    async def _read_presence(self) -> None:
        """The nodes whose tunnel another hub holds, read at most every
        :data:`PRESENCE_EVERY` seconds (one query for the whole cluster)."""
        now = time.monotonic()
        if now - self._elsewhere_at < PRESENCE_EVERY:
            return
        me = self.registry.hub_id
        leases = await self.storage.presence.all(time.time())
        self._elsewhere = {p.node_id for p in leases if p.hub_id != me}
        self._elsewhere_at = now

    async def _step(self, rollout: Rollout, nodes: list[RolloutNode]) -> None:
        failed = [n for n in nodes if n.canary and n.state in CANARY_FAILURES]
        if not self.may_orchestrate():
            if not failed and not all(n.final for n in nodes):
                await self._offer(rollout, nodes)
            return  # a failed canary, all final: the orchestrating hub stops or ends it
        if failed:
            reason = f"canary {failed[0].node_name} {failed[0].state}: {failed[0].detail}"
            if not await self.store.finish(rollout.id, "stopped", reason, time.time()):
                return  # stopped meanwhile (tctl firmware stop)
            await self._record(EventType.FIRMWARE_ROLLOUT_STOP, rollout, reason=reason[:400])
            log.warning("roll-out stopped", extra={"rollout": rollout.id, "reason": reason})
            return
        if all(n.final for n in nodes):
            if not await self.store.finish(rollout.id, "done", "", time.time()):
                return  # stopped meanwhile: it stays stopped
            counts: dict[str, int] = {}
            for n in nodes:
                counts[n.state] = counts.get(n.state, 0) + 1
            await self._record(EventType.FIRMWARE_ROLLOUT_DONE, rollout, results=counts)
            log.info("roll-out done", extra={"rollout": rollout.id, "results": counts})
            return
        if not await self._bundle_readable(rollout):
            return
        if await self._presence(rollout, nodes):
            nodes = await self.store.nodes(rollout.id)
            current = await self.store.rollout(rollout.id)
            if current is None or current.state != "running":
                return
        await self._offer(rollout, nodes)

    async def _offer(self, rollout: Rollout, nodes: list[RolloutNode]) -> None:
        """Start the transfers of the current wave's nodes whose tunnels this hub holds."""
        canaries_left = [n for n in nodes if n.canary and not n.final]
        wave = canaries_left or [n for n in nodes if not n.final]
        busy = sum(1 for key in self._inflight if key[0] == rollout.id)
        now = time.monotonic()
        for node in wave:
            key = (rollout.id, node.node_id)
            if busy >= rollout.max_parallel:
                break
            if key in self._inflight or self._retry_at.get(key, 0.0) > now:
                continue
            live = self.registry.get(node.node_id)
            if live is None:
                continue  # offline: offered when it connects
            # One hub offers (another may hold a tunnel of the node too); the claim also
            # fails once the roll-out stopped (tctl firmware stop races the tick).
            if not await self.store.claim(rollout.id, node.node_id, node.claims, time.time()):
                continue
            busy += 1
            task = asyncio.ensure_future(self._transfer(rollout, node, live.tunnel))
            self._inflight[key] = task
            task.add_done_callback(functools.partial(self._ended, key))

    async def _bundle_readable(self, rollout: Rollout) -> bool:
        """The orchestrating hub's look at the bundle: one it cannot read (gone, not a
        bundle) stops the roll-out, whichever hub's transfer would meet it."""
        try:
            await self._header(rollout)  # read once, then cached
            if await self.blobs.size(rollout.bundle) is None:
                raise BundleUnreadable(f"no blob {rollout.bundle[:12]}")
        except Exception as exc:
            if isinstance(exc, StorageError) and not isinstance(exc, NotFound):
                log.warning("bundle unreadable: %s; will look again", exc)
                return False  # the database, not the bundle
            await self._unreadable(rollout, exc)
            return False
        return True

    async def _presence(self, rollout: Rollout, nodes: list[RolloutNode]) -> bool:
        """Show offline nodes, replace a canary offline too long (or stop); True if changed."""
        from hub.firmware.presence import (
            OFFLINE,
            WAITING,
            MarkOffline,
            MarkOnline,
            ReplaceCanary,
            Stop,
            plan,
        )

        busy = {node for rid, node in self._inflight if rid == rollout.id}
        online = {
            n.node_id
            for n in nodes
            if self.registry.get(n.node_id) is not None or n.node_id in self._elsewhere
        }
        for node_id in online:
            self._last_seen.pop(node_id, None)
        for n in nodes:
            wanted = n.state in WAITING or n.canary
            if n.final or n.node_id in online or n.node_id in busy or not wanted:
                continue
            if n.node_id not in self._last_seen:  # once per time offline (None: never seen)
                seen = self.registry.offline_since(n.node_id)
                if seen is None:
                    record = await self.storage.nodes.get(n.node_id)
                    seen = record.last_seen if record else None
                self._last_seen[n.node_id] = seen
        now = time.time()
        actions = plan(rollout, nodes, online, busy, self._last_seen, now, self._watching_since)
        for action in actions:
            if isinstance(action, MarkOffline):
                node = action.node  # only from the state read (a transfer may have reported since)
                await self.store.update_node(
                    rollout.id, node.node_id, OFFLINE, action.detail, now, expect=node.state
                )
            elif isinstance(action, MarkOnline):
                await self.store.update_node(
                    rollout.id, action.node.node_id, "pending", "", now, expect=OFFLINE
                )
            elif isinstance(action, ReplaceCanary):
                old, new = action.old, action.new
                if await self.store.replace_canary(
                    rollout.id, old.node_id, new.node_id, action.detail, now
                ):
                    log.warning(
                        "offline canary replaced",
                        extra={"rollout": rollout.id, "node": old.node_name, "by": new.node_name},
                    )
            elif isinstance(action, Stop) and await self.store.finish(
                rollout.id, "stopped", action.reason, now
            ):
                await self._record(
                    EventType.FIRMWARE_ROLLOUT_STOP, rollout, reason=action.reason[:400]
                )
                log.warning(
                    "roll-out stopped", extra={"rollout": rollout.id, "reason": action.reason}
                )
        return bool(actions)

    def _ended(self, key: tuple[str, str], _task: object = None) -> None:
        self._inflight.pop(key, None)
        self._retry_at[key] = time.monotonic() + RETRY_AFTER
        self._wake.set()

    async def _record(self, type: EventType, rollout: Rollout, **fields: Any) -> None:
        if self.audit is None:
            return
        try:
            await self.audit.record(make_event(type, node=HUB_NODE, rollout=rollout.id, **fields))
        except Exception:
            log.exception("firmware audit event could not be stored")

    async def _read(self, rollout: Rollout, offset: int, length: int) -> bytes:
        """Bytes of the roll-out's bundle; :class:`BundleUnreadable` if the storage has
        lost them (a database error is left to the caller: logged, retried)."""
        try:
            return await self.blobs.read(rollout.bundle, offset, length)
        except NotFound as exc:
            raise BundleUnreadable(str(exc)) from None

    async def _header(self, rollout: Rollout) -> bytes:
        """The bundle's header (what the agent checks before downloading)."""
        from firmware_tools.bundle import header_size

        cached = self._headers.get(rollout.bundle)
        if cached is None:
            prefix = await self._read(rollout, 0, 12)
            size = header_size(prefix)
            if size is None:
                raise BundleUnreadable(f"bundle {rollout.bundle[:12]} is shorter than a header")
            cached = prefix + await self._read(rollout, len(prefix), size - len(prefix))
            if len(cached) < size:
                raise BundleUnreadable(f"bundle {rollout.bundle[:12]} ends inside its header")
            self._headers[rollout.bundle] = cached
        return cached

    async def _transfer(self, rollout: Rollout, node: RolloutNode, tunnel: Tunnel) -> None:
        store, fields = self.store, {"rollout": rollout.id, "node_id": node.node_id}
        try:
            header = await self._header(rollout)
        except Exception as exc:  # missing, unreadable, not a bundle: retrying cannot help
            if isinstance(exc, StorageError) and not isinstance(exc, NotFound):
                log.warning("bundle header unreadable: %s; will offer again", exc, extra=fields)
                return  # the database, not the bundle
            await self._unreadable(rollout, exc)
            return
        try:
            channel = await tunnel.open_channel(FIRMWARE_KIND, {"rollout": rollout.id}, timeout=15)
        except ChannelOpenError as exc:
            if exc.code == OpenFailure.UNKNOWN_KIND:
                await store.update_node(
                    rollout.id, node.node_id, "failed", f"agent refused: {exc.reason}", time.time()
                )
            return
        except (TunnelClosed, OSError) as exc:
            log.info("firmware offer failed: %s", exc, extra=fields)
            return
        core = HubTransfer(rollout.id, header, rollout.size, rollout.sha256, rollout.force)
        sender: asyncio.Task[None] | None = None
        try:
            channel.write(core.data_to_send())
            while core.state is not XferState.DONE:
                async with asyncio.timeout(IDLE_TIMEOUT):  # a hook and a health check at most
                    data = await channel.read(READ_SIZE)
                if not data:
                    break
                for event in core.receive_data(data):
                    if isinstance(event, ResumeRequested):
                        offset = await self._agree(rollout, event)
                        core.start_from(offset)
                        await store.update_node(
                            rollout.id,
                            node.node_id,
                            "transferring",
                            f"from byte {offset}",
                            time.time(),
                            progress=offset,
                            resumed_from=offset,
                            attempt=True,
                        )
                        sender = asyncio.ensure_future(self._send(rollout, core, channel))
                    elif isinstance(event, Status):
                        await store.update_node(
                            rollout.id,
                            node.node_id,
                            event.state,
                            event.detail,
                            time.time(),
                            progress=event.progress,
                        )
                    elif isinstance(event, Refused):
                        busy = event.reason.startswith("busy")
                        state = "pending" if busy else "failed"
                        await store.update_node(
                            rollout.id,
                            node.node_id,
                            state,
                            f"agent refused: {event.reason}",
                            time.time(),
                        )
            if core.state is not XferState.DONE:
                log.info("firmware transfer broke off; will offer again", extra=fields)
        except ProtocolError as exc:
            log.warning("bad firmware message from the agent: %s", exc, extra=fields)
        except (ChannelClosedError, TunnelClosed, ConnectionError):
            log.info("firmware channel lost; will offer again", extra=fields)
        except TimeoutError:
            log.warning("agent silent on its firmware channel; will offer again", extra=fields)
        except BundleUnreadable as exc:  # the hub's copy (the resume check)
            await self._unreadable(rollout, exc)
        except Exception:  # the storage: logged, retried
            log.exception("firmware transfer failed; will offer again", extra=fields)
        finally:
            if sender is not None:
                sender.cancel()
                await asyncio.gather(sender, return_exceptions=True)
            channel.close()

    async def _unreadable(self, rollout: Rollout, exc: Exception) -> None:
        """Stop a roll-out whose bundle the hub cannot read any more (and say so); a hub
        that does not orchestrate logs it and leaves the stop to the one that does."""
        why = str(exc) or type(exc).__name__
        reason = f"hub copy of the bundle unreadable: {why}"[:400]
        self._headers.pop(rollout.bundle, None)
        if not self.may_orchestrate():
            log.error("%s; the orchestrating hub stops the roll-out", reason)
            return
        if not await self.store.finish(rollout.id, "stopped", reason, time.time()):
            return  # already stopped or done (another transfer, tctl firmware stop)
        await self._record(EventType.FIRMWARE_ROLLOUT_STOP, rollout, reason=reason)
        log.error("roll-out stopped", extra={"rollout": rollout.id, "reason": reason})
        self._wake.set()  # the next tick cancels its other transfers

    async def _agree(self, rollout: Rollout, req: ResumeRequested) -> int:
        """The agent's offset if its prefix hash matches the bundle's, else 0."""
        if req.offset == 0:
            return 0
        digest = hashlib.sha256()
        offset = 0
        while offset < req.offset:
            chunk = await self._read(rollout, offset, min(READ_SIZE, req.offset - offset))
            if not chunk:
                break
            digest.update(chunk)
            offset += len(chunk)
        return req.offset if digest.hexdigest() == req.prefix_sha256 else 0

    async def _send(self, rollout: Rollout, core: HubTransfer, channel: Channel) -> None:
        """Send the bundle from the agreed offset; on a failure close the channel (the
        reader then ends the transfer, to be offered again)."""
        try:
            await self._send_chunks(rollout, core, channel)
        except (ChannelClosedError, TunnelClosed, ConnectionError):
            pass
        except BundleUnreadable as exc:  # the hub's copy of the bundle
            await self._unreadable(rollout, exc)
            channel.close()
        except Exception:
            log.exception("sending firmware failed", extra={"rollout": rollout.id})
            channel.close()

    async def _send_chunks(self, rollout: Rollout, core: HubTransfer, channel: Channel) -> None:
        bucket = TokenBucket(rollout.rate, now=time.monotonic()) if rollout.rate else None
        while want := core.wants_data:
            data = await self._read(rollout, core.position, want)
            if not data:
                raise BundleUnreadable(f"bundle {rollout.bundle[:12]} is shorter than recorded")
            if bucket is not None:
                await asyncio.sleep(bucket.delay(len(data), time.monotonic()))
            core.send_chunk(data)
            channel.write(core.data_to_send())
            await channel.drain()
        if tail := core.data_to_send():  # "end" when nothing was left to send
            channel.write(tail)
