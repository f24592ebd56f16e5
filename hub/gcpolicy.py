"""The hub's garbage-collector policy: no second-long pauses while a fleet connects.

CPython's cyclic collector stops the whole process for a full (generation 2)
collection, and a full collection walks every tracked object. At 10,000 agents
the hub holds ~3 million of them (TLS, websocket and tunnel state, tasks), and
while a reconnect storm grows the heap the collector runs a full pass each time
it has grown by a quarter: measured in ``bench hub_scale``, pauses of 110 ms
growing to 890 ms every one to three seconds, each one stalling every user
request and relay on the event loop.

Objects that survived a full collection are long-lived (tunnels, certificates,
modules), so this policy freezes them (:func:`gc.freeze`): later collections
walk only what was created since. Cyclic garbage among frozen objects (a
closed tunnel whose objects still point at each other) waits for the periodic
maintenance collection, which unfreezes everything, collects in full once and
freezes the survivors again: one pause of the old kind (about 0.2 s per
100,000 objects here) every ``interval`` seconds instead of every few seconds.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from typing import Any

log = logging.getLogger("remoteler.hub.gc")

#: seconds between maintenance collections (``hub start --gc-interval``)
DEFAULT_INTERVAL = 600.0


class GcPolicy:
    """Install with :meth:`install` from the event loop's thread once start-up is done,
    then run :meth:`run` as a task for the maintenance collections."""

    def __init__(self, interval: float = DEFAULT_INTERVAL) -> None:
        self.interval = interval
        self.frozen_after_full = 0
        self.last_pause = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._freeze_pending = False

    def install(self) -> None:
        self._loop = asyncio.get_running_loop()
        gc.collect()
        gc.freeze()  # start-up objects (modules, CAs, config) are never garbage
        gc.callbacks.append(self._on_gc)

    def uninstall(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        gc.unfreeze()

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        # Runs in whichever thread allocated; freeze from the loop's thread, outside
        # the collection that is still finishing.
        if phase != "stop" or info["generation"] != 2 or self._freeze_pending:
            return
        if self._loop is not None and not self._loop.is_closed():
            self._freeze_pending = True
            self._loop.call_soon_threadsafe(self._freeze)

    def _freeze(self) -> None:
        self._freeze_pending = False
        gc.freeze()
        self.frozen_after_full += 1

    def maintain(self) -> float:
        """Collect everything once (frozen objects included); return the pause in s."""
        start = time.perf_counter()
        gc.unfreeze()
        collected = gc.collect()
        gc.freeze()
        self.last_pause = time.perf_counter() - start
        log.info(
            "full garbage collection",
            extra={
                "pause_ms": round(self.last_pause * 1000),
                "collected": collected,
                "objects": gc.get_freeze_count(),
            },
        )
        return self.last_pause

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.maintain()
