"""The hub's garbage-collector policy: no second-long pauses while a fleet connects.

CPython's cyclic collector stops the whole process for a full (generation 2)
collection, and a full collection walks every tracked object. At 10,000 agents
the hub holds ~1.5 million of them (TLS, websocket and tunnel state, tasks), and
while a reconnect storm grows the heap the collector runs a full pass each time
it has grown by a quarter: measured in ``bench hub_scale``, pauses of 110 ms
growing to 890 ms every one to three seconds, each one stalling every user
request and relay on the event loop.

Objects that survived a full collection are long-lived (tunnels, certificates,
modules), so this policy freezes them (:func:`gc.freeze`, from the collector's
own callback, so nothing allocated after the collection is frozen with them):
later collections walk only what was created since. Cyclic garbage among
frozen objects (a closed tunnel whose objects still point at each other) waits
for the periodic maintenance collection, which unfreezes everything, collects
in full once and freezes the survivors again: one pause of the old kind (582 ms
for 1.5 million objects at 10,000 idle agents here) every ``interval`` seconds
instead of every few seconds. Between two, memory held by such cycles grows
with agent churn; a shorter interval trades pauses for it.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from typing import Any

log = logging.getLogger("remoteler.hub.gc")

#: seconds between maintenance collections (``hub start --gc-interval``), and the least
DEFAULT_INTERVAL = 600.0
MIN_INTERVAL = 60.0


class GcPolicy:
    """Install with :meth:`install` once start-up is done, run :meth:`run` as a task
    for the maintenance collections, and :meth:`uninstall` at shutdown."""

    def __init__(self, interval: float = DEFAULT_INTERVAL) -> None:
        self.interval = interval
        self.frozen_after_full = 0
        self.last_pause = 0.0
        self._maintaining = False

    def install(self) -> None:
        gc.collect()
        gc.freeze()  # start-up objects (modules, CAs, config) are never garbage
        gc.callbacks.append(self._on_gc)

    def uninstall(self) -> None:
        """Undo :meth:`install`; nothing if it was not installed (``--gc-interval 0``)."""
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
            gc.unfreeze()

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        # Runs in whichever thread triggered the collection, with the GIL held and
        # the collection finished: what is not frozen now is exactly its survivors.
        if phase == "stop" and info["generation"] == 2 and not self._maintaining:
            gc.freeze()
            self.frozen_after_full += 1

    def maintain(self) -> float:
        """Collect everything once (frozen objects included); return the pause in s."""
        start = time.perf_counter()
        self._maintaining = True
        try:
            gc.unfreeze()
            collected = gc.collect()
            gc.freeze()
        finally:
            self._maintaining = False
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
