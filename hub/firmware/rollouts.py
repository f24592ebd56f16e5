"""The running hub's roll-out orchestrator: push bundles to agents over their tunnels.

``tctl firmware push`` writes a roll-out into ``firmware.db``; this loop polls
it (and wakes early when a transfer ends). Per running roll-out:

* a canary that ends ``failed`` or ``rolled-back`` stops the roll-out: no other
  node is offered the bundle;
* until every canary is ``installed`` only canaries are offered it; then the rest;
* at most ``max_parallel`` transfers at once; nodes offline now show as
  ``offline since ...`` and are offered the bundle when they connect; a canary
  offline for longer than the roll-out's canary timeout is replaced by another
  online node, or the roll-out stops saying so (:mod:`hub.firmware.presence`);
* once every node is final the roll-out is ``done``.

A transfer is one ``firmware`` channel (LOW priority: interactive sessions go
first) run by :class:`remoteler.firmware_xfer.HubTransfer`, with an optional
token-bucket cap. A cut link leaves the node where it was; the next offer
continues from what the agent staged, once the hub has checked its hash.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import time
from pathlib import Path
from typing import Any

from hub.api.tunnels import TunnelRegistry
from hub.firmware_store import CANARY_FAILURES, FirmwareStore, NodeState, Rollout
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

POLL_INTERVAL = 1.0
#: Seconds before offering again to a node whose transfer broke off.
RETRY_AFTER = 2.0
READ_SIZE = 64 * 1024
#: Seconds an agent may stay silent on a firmware channel (its install hook and
#: health check run 300 s + 60 s at most; it reports before each).
IDLE_TIMEOUT = 900.0


class FirmwareRollouts:
    def __init__(
        self,
        data_dir: Path,
        registry: TunnelRegistry,
        audit: Any,
        interval: float = POLL_INTERVAL,
    ) -> None:
        self.data_dir = data_dir
        self.registry = registry
        self.audit = audit
        self.interval = interval
        self.store: FirmwareStore | None = None
        #: (rollout, node id) -> its transfer task
        self._inflight: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._retry_at: dict[tuple[str, str], float] = {}
        self._wake = asyncio.Event()
        self._headers: dict[str, bytes] = {}
        #: node id -> last heartbeat (wall clock) of an offline node, read once from the storage
        self._last_seen: dict[str, float | None] = {}
        #: wall clock when this hub began watching roll-outs (its downtime is not a canary's)
        self._watching_since = time.time()

    async def run(self) -> None:
        self._watching_since = time.time()
        self.store = await FirmwareStore.open(self.data_dir)
        try:
            while True:
                try:
                    await self.tick()
                except Exception:
                    log.exception("firmware roll-out step failed; will retry")
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.interval):
                        await self._wake.wait()
        finally:
            await self.close()

    async def close(self) -> None:
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._inflight.clear()
        if self.store is not None:
            await self.store.close()
            self.store = None

    async def tick(self) -> None:
        assert self.store is not None
        running = await self.store.rollouts("running")
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

    async def _step(self, rollout: Rollout, nodes: list[NodeState]) -> None:
        assert self.store is not None
        failed = [n for n in nodes if n.canary and n.state in CANARY_FAILURES]
        if failed:
            reason = f"canary {failed[0].node_name} {failed[0].state}: {failed[0].detail}"
            if not await self.store.finish(rollout.id, "stopped", reason):
                return  # stopped meanwhile (tctl firmware stop)
            await self._record(EventType.FIRMWARE_ROLLOUT_STOP, rollout, reason=reason[:400])
            log.warning("roll-out stopped", extra={"rollout": rollout.id, "reason": reason})
            return
        if all(n.final for n in nodes):
            if not await self.store.finish(rollout.id, "done"):
                return  # stopped meanwhile: it stays stopped
            counts: dict[str, int] = {}
            for n in nodes:
                counts[n.state] = counts.get(n.state, 0) + 1
            await self._record(EventType.FIRMWARE_ROLLOUT_DONE, rollout, results=counts)
            log.info("roll-out done", extra={"rollout": rollout.id, "results": counts})
            return
        if await self._presence(rollout, nodes):
            nodes = await self.store.nodes(rollout.id)
            current = await self.store.rollout(rollout.id)
            if current is None or current.state != "running":
                return
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
            current = await self.store.rollout(rollout.id)  # tctl firmware stop races the tick
            if current is None or current.state != "running":
                return
            busy += 1
            task = asyncio.ensure_future(self._transfer(rollout, node, live.tunnel))
            self._inflight[key] = task
            task.add_done_callback(functools.partial(self._ended, key))

    async def _presence(self, rollout: Rollout, nodes: list[NodeState]) -> bool:
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

        assert self.store is not None
        busy = {node for rid, node in self._inflight if rid == rollout.id}
        online = {n.node_id for n in nodes if self.registry.get(n.node_id) is not None}
        for node_id in online:
            self._last_seen.pop(node_id, None)
        for n in nodes:
            wanted = n.state in WAITING or n.canary
            if n.final or n.node_id in online or n.node_id in busy or not wanted:
                continue
            if n.node_id not in self._last_seen:  # once per time offline (None: never seen)
                seen = self.registry.offline_since(n.node_id)
                if seen is None:
                    record = await self.registry.storage.nodes.get(n.node_id)
                    seen = record.last_seen if record else None
                self._last_seen[n.node_id] = seen
        actions = plan(
            rollout, nodes, online, busy, self._last_seen, time.time(), self._watching_since
        )
        for action in actions:
            if isinstance(action, MarkOffline):
                node = action.node  # only from the state read (a transfer may have reported since)
                await self.store.update_node(
                    rollout.id, node.node_id, OFFLINE, action.detail, expect=node.state
                )
            elif isinstance(action, MarkOnline):
                await self.store.update_node(
                    rollout.id, action.node.node_id, "pending", "", expect=OFFLINE
                )
            elif isinstance(action, ReplaceCanary):
                old, new = action.old, action.new
                if await self.store.replace_canary(
                    rollout.id, old.node_id, new.node_id, action.detail
                ):
                    log.warning(
                        "offline canary replaced",
                        extra={"rollout": rollout.id, "node": old.node_name, "by": new.node_name},
                    )
            elif isinstance(action, Stop) and await self.store.finish(
                rollout.id, "stopped", action.reason
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

    def _header(self, rollout: Rollout) -> bytes:
        """The bundle's header (what the agent checks before downloading)."""
        from firmware_tools.bundle import header_size

        cached = self._headers.get(rollout.sha256)
        if cached is None:
            with open(rollout.bundle, "rb") as f:
                prefix = f.read(12)
                size = header_size(prefix) or 0
                cached = prefix + f.read(size - len(prefix))
            self._headers[rollout.sha256] = cached
        return cached

    async def _transfer(self, rollout: Rollout, node: NodeState, tunnel: Tunnel) -> None:
        assert self.store is not None
        store, fields = self.store, {"rollout": rollout.id, "node_id": node.node_id}
        try:
            header = await asyncio.to_thread(self._header, rollout)
        except Exception as exc:  # missing, unreadable, not a bundle: retrying cannot help
            await self._unreadable(rollout, exc)
            return
        try:
            channel = await tunnel.open_channel(FIRMWARE_KIND, {"rollout": rollout.id}, timeout=15)
        except ChannelOpenError as exc:
            if exc.code == OpenFailure.UNKNOWN_KIND:
                await store.update_node(
                    rollout.id, node.node_id, "failed", f"agent refused: {exc.reason}"
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
                            offset,
                            offset,
                            attempt=True,
                        )
                        sender = asyncio.ensure_future(self._send(rollout, core, channel))
                    elif isinstance(event, Status):
                        await store.update_node(
                            rollout.id, node.node_id, event.state, event.detail, event.progress
                        )
                    elif isinstance(event, Refused):
                        busy = event.reason.startswith("busy")
                        state = "pending" if busy else "failed"
                        await store.update_node(
                            rollout.id, node.node_id, state, f"agent refused: {event.reason}"
                        )
            if core.state is not XferState.DONE:
                log.info("firmware transfer broke off; will offer again", extra=fields)
        except ProtocolError as exc:
            log.warning("bad firmware message from the agent: %s", exc, extra=fields)
        except (ChannelClosedError, TunnelClosed, ConnectionError):
            log.info("firmware channel lost; will offer again", extra=fields)
        except TimeoutError:
            log.warning("agent silent on its firmware channel; will offer again", extra=fields)
        except OSError as exc:  # reading the hub's copy (the resume check)
            await self._unreadable(rollout, exc)
        except Exception:  # the hub's copy of the bundle, its database: logged, retried
            log.exception("firmware transfer failed; will offer again", extra=fields)
        finally:
            if sender is not None:
                sender.cancel()
                await asyncio.gather(sender, return_exceptions=True)
            channel.close()

    async def _unreadable(self, rollout: Rollout, exc: Exception) -> None:
        """Stop a roll-out whose bundle the hub cannot read any more (and say so)."""
        assert self.store is not None
        if isinstance(exc, OSError) and exc.strerror:
            why = f"{exc.strerror}: {exc.filename or rollout.bundle}"
        else:
            why = str(exc) or type(exc).__name__
        reason = f"hub copy of the bundle unreadable: {why}"[:400]
        self._headers.pop(rollout.sha256, None)
        if not await self.store.finish(rollout.id, "stopped", reason):
            return  # already stopped or done (another transfer, tctl firmware stop)
        await self._record(EventType.FIRMWARE_ROLLOUT_STOP, rollout, reason=reason)
        log.error("roll-out stopped", extra={"rollout": rollout.id, "reason": reason})
        self._wake.set()  # the next tick cancels its other transfers

    async def _agree(self, rollout: Rollout, req: ResumeRequested) -> int:
        """The agent's offset if its prefix hash matches the bundle's, else 0."""
        if req.offset == 0:
            return 0
        digest = await asyncio.to_thread(_prefix_sha256, rollout.bundle, req.offset)
        return req.offset if digest == req.prefix_sha256 else 0

    async def _send(self, rollout: Rollout, core: HubTransfer, channel: Channel) -> None:
        """Send the bundle from the agreed offset; on a failure close the channel (the
        reader then ends the transfer, to be offered again)."""
        try:
            await self._send_chunks(rollout, core, channel)
        except (ChannelClosedError, TunnelClosed, ConnectionError):
            pass
        except OSError as exc:  # the hub's copy of the bundle
            await self._unreadable(rollout, exc)
            channel.close()
        except Exception:
            log.exception("sending firmware failed", extra={"rollout": rollout.id})
            channel.close()

    async def _send_chunks(self, rollout: Rollout, core: HubTransfer, channel: Channel) -> None:
        bucket = TokenBucket(rollout.rate, now=time.monotonic()) if rollout.rate else None
        while want := core.wants_data:
            data = await asyncio.to_thread(_read_at, rollout.bundle, core.position, want)
            if not data:
                raise OSError(f"bundle {rollout.bundle} is shorter than recorded")
            if bucket is not None:
                await asyncio.sleep(bucket.delay(len(data), time.monotonic()))
            core.send_chunk(data)
            channel.write(core.data_to_send())
            await channel.drain()
        if tail := core.data_to_send():  # "end" when nothing was left to send
            channel.write(tail)


def _read_at(path: str, offset: int, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)


def _prefix_sha256(path: str, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while size > 0:
            chunk = f.read(min(READ_SIZE, size))
            if not chunk:
                break
            digest.update(chunk)
            size -= len(chunk)
    return digest.hexdigest()
