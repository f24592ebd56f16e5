"""Clean-up one hub of the cluster does for all, each under its lease (hub/app.py).

* ``presence-gc`` (:func:`presence_gc`): every :data:`PRESENCE_EVERY` seconds, delete
  the presence leases and hub records that lapsed (hubs that died without cleaning
  up), :data:`EXPIRE_BATCH` at a time until a batch is short.
* ``audit-retention`` (:func:`audit_retention`, ``hub start --audit-retention DAYS``):
  at once and every :data:`RETENTION_EVERY` seconds, delete the audit events (and
  so the session recordings, whose chunks are events) older than DAYS,
  :data:`PRUNE_BATCH` at a time until a batch is short; the count is logged.

The one-shot steps (:func:`expire_lapsed`, :func:`prune_audit`) are separate from
their loops so they can be tested and called on their own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from hub.storage.api import AuditLog, Storage, StorageError
from remoteler.textfmt import fmt_time

__all__ = [
    "EXPIRE_BATCH",
    "PRESENCE_EVERY",
    "PRUNE_BATCH",
    "RETENTION_EVERY",
    "audit_retention",
    "expire_lapsed",
    "presence_gc",
    "prune_audit",
]

log = logging.getLogger("remoteler.hub.sweeps")

#: Seconds between two sweeps of lapsed presence leases and hub records.
PRESENCE_EVERY = 60.0
EXPIRE_BATCH = 1000
#: Seconds between two audit retention passes.
RETENTION_EVERY = 600.0
#: Events deleted per transaction: audit ingest gets its turn between two batches.
PRUNE_BATCH = 5000
DAY = 86400.0


async def expire_lapsed(storage: Storage, now: float, batch: int = EXPIRE_BATCH) -> tuple[int, int]:
    """Delete lapsed presence leases and hub records, a batch of each at a time, until
    both batches are short; how many of each."""
    leases = hubs = 0
    while True:
        got_leases = await storage.presence.expire(now, batch)
        got_hubs = await storage.hubs.expire(now, batch)
        leases, hubs = leases + got_leases, hubs + got_hubs
        if got_leases < batch and got_hubs < batch:
            return leases, hubs


async def presence_gc(
    storage: Storage,
    every: float = PRESENCE_EVERY,
    clock: Callable[[], float] = time.time,
) -> None:
    """The ``presence-gc`` job: :func:`expire_lapsed` every ``every`` seconds, forever."""
    while True:
        try:
            leases, hubs = await expire_lapsed(storage, clock())
        except StorageError as exc:
            log.warning("expiring lapsed leases failed; will retry: %s", exc)
        else:
            if leases or hubs:
                log.info("lapsed leases deleted", extra={"presence": leases, "hubs": hubs})
        await asyncio.sleep(every)


async def prune_audit(audit: AuditLog, before: float, batch: int = PRUNE_BATCH) -> int:
    """Delete the events older than ``before``, ``batch`` per transaction, until a batch is
    short; how many."""
    total = 0
    while True:
        got = await audit.prune(before, batch)
        total += got
        if got < batch:
            return total
        await asyncio.sleep(0)  # the hub's other work between two batches


async def audit_retention(
    audit: AuditLog,
    days: float,
    every: float = RETENTION_EVERY,
    clock: Callable[[], float] = time.time,
) -> None:
    """The ``audit-retention`` job: keep ``days`` of audit trail (at once, then every
    ``every`` seconds); ``days`` must be positive."""
    if days <= 0:
        raise ValueError("audit retention needs a positive number of days")
    while True:
        before = clock() - days * DAY
        try:
            count = await prune_audit(audit, before)
        except StorageError as exc:
            log.warning("audit retention failed; will retry: %s", exc)
        else:
            log.info(
                "audit retention: %d events older than %s deleted",
                count,
                fmt_time(before),
                extra={"deleted": count, "days": days},
            )
        await asyncio.sleep(every)
