"""Open the agent's outbox at start, whatever state ``audit.db`` is in (the CLI calls it).

- **Damaged** (quick_check fails, not SQLite, or the outbox cannot open it): the
  file is set aside as ``audit.db.corrupt-<UTC time>``, what can be read is
  salvaged into a fresh outbox (:mod:`edge_agent.outbox_check`), and an
  ``audit.corrupt`` event (``events_salvaged``, ``pages``, ``pages_lost``,
  ``moved_to``, ``reason``, ``resumed_at``) is written into it with the salvaged
  events, which the forwarder delivers as any other.
- **Missing or empty** while the identity's sequence mark says events were
  numbered before (:mod:`edge_agent.seqmark`): an ``audit.gap`` event
  (``reason``, ``resumed_at``, ``reserved``) is recorded.

In both cases numbering resumes after the mark, so the hub never sees a seq
twice. The agent starts either way: a device is never cut off by its outbox.

Crash-safe order for a damaged file: salvage it in place (read-only) into
``audit.db.salvaged`` together with the ``audit.corrupt`` event (mark reserved
first), durably; then move the damaged file aside; then rename the salvaged file
to ``audit.db``. A start that finds no ``audit.db`` but an ``audit.db.salvaged``
completes that last rename; one that finds both (a crash before the move) salvages
again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from edge_agent.outbox import Outbox, Policy, _pack
from edge_agent.outbox_check import (
    Row,
    Salvage,
    _fsync_dir,
    aside_path,
    check_outbox,
    count_pages,
    move_aside,
    salvage,
    write_rows,
)
from edge_agent.seqmark import SeqMark, SeqMarkError
from remoteler.audit.events import EventType, make_event

__all__ = ["Recovery", "open_outbox", "recover"]

log = logging.getLogger("remoteler.agent.outbox")

#: Suffix of the salvaged outbox while it is written (``audit.db.salvaged``).
SALVAGED = ".salvaged"


@dataclass
class Recovery:
    """What :func:`recover` did: events to record once the outbox is open."""

    events: list[tuple[EventType, dict[str, Any]]] = field(default_factory=list)


def recover(
    path: Path, mark: SeqMark, now: float, reason: str | None = None, node_id: str = ""
) -> Recovery:
    """Check ``path`` and repair it as the module says (blocking; sets ``mark.floor``).

    ``reason`` forces the damaged path (the outbox failed to open a file the check
    passed).
    """
    salvaged = path.with_name(path.name + SALVAGED)
    if salvaged.exists():
        if path.exists() and reason is None:
            salvaged.unlink()  # a crash before the damaged file moved: salvage again
        elif not path.exists():
            os.replace(salvaged, path)  # a crash between the two renames: finish
            _fsync_dir(path.parent)
            log.warning("audit outbox: completed an interrupted salvage (%s)", path)
    found = check_outbox(path) if reason is None else None
    state, detail = (found.state, found.detail) if found else ("corrupt", reason or "")
    out = Recovery()
    if state == "ok":
        _catch_up(path, mark)
        return out
    if state in ("missing", "empty"):
        if mark.reserved > 0:
            mark.floor = mark.reserved + 1
            log.warning(
                "audit outbox %s is %s; numbering resumes at seq %d (events not yet "
                "delivered, if any, are lost)",
                path,
                state,
                mark.floor,
            )
            out.events.append(
                (
                    EventType.AUDIT_GAP,
                    {"reason": state, "resumed_at": mark.floor, "reserved": mark.reserved},
                )
            )
        _drop_stale(path, now)
        return out
    salvaged.unlink(missing_ok=True)
    path.with_name(path.name + "-shm").unlink(missing_ok=True)  # stale; read-only below
    try:
        saved = salvage(path, mark.reserved)
    except Exception:  # a damage salvage did not foresee: start empty rather than not at all
        log.exception("audit outbox salvage failed; starting with an empty outbox")
        pages = count_pages(path)[0]
        saved = Salvage((), pages, pages, 0)
    aside = aside_path(path, now)
    seq = max(mark.reserved, saved.last_seq) + 1
    note = make_event(
        EventType.AUDIT_CORRUPT,
        node=node_id,
        now=now,
        events_salvaged=len(saved.rows),
        pages=saved.pages,
        pages_lost=saved.pages_lost,
        moved_to=aside.name,
        reason=detail[:200],
        resumed_at=seq,
    )
    mark.reserve_or_log(seq)  # before the row is committed
    body = _pack(replace(note, seq=seq))
    write_rows(salvaged, (*saved.rows, Row(seq, note.id, note.type, note.time, body)))
    move_aside(path, now, aside)
    os.replace(salvaged, path)
    _fsync_dir(path.parent)
    mark.floor = seq + 1
    log.error(
        "audit outbox %s is damaged (%s): kept as %s; %d events salvaged, %d of %d pages "
        "lost; numbering resumes at seq %d",
        path,
        detail,
        aside.name,
        len(saved.rows),
        saved.pages_lost,
        saved.pages,
        seq,
    )
    return out


def _drop_stale(path: Path, now: float) -> None:
    """No (or an empty) database: an empty file and a leftover ``-wal`` (which SQLite
    would replay into the new file) are set aside, the ``-shm`` removed."""
    wal = path.with_name(path.name + "-wal")
    if path.exists() or wal.exists():
        if not path.exists():
            path.touch(mode=0o600)
        move_aside(path, now)


def _catch_up(path: Path, mark: SeqMark) -> None:
    """A sound outbox numbered past the mark (made before there was one): reserve it."""
    with (
        contextlib.suppress(sqlite3.DatabaseError),
        contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as db,
    ):
        row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        if row and not mark.covers(int(row[0])):
            mark.reserve(int(row[0]))


def load_mark(identity_dir: Path, node_id: str) -> SeqMark:
    """The node's sequence mark; a damaged mark file is set aside and a new one begun."""
    try:
        return SeqMark.load(identity_dir, node_id)
    except SeqMarkError as exc:
        mark = SeqMark(identity_dir / "audit-seq.json", node_id)
        try:
            kept = f"kept as {move_aside(mark.path, time.time()).name}"
        except OSError as err:  # read-only storage: the next reserve replaces it, if it can
            kept = f"not set aside ({err.strerror or err})"
        log.error("%s; %s, the sequence goes on from the outbox", exc, kept)
        return mark


async def open_outbox(
    path: Path,
    identity_dir: Path,
    node_id: str,
    *,
    quota_bytes: int,
    policy: Policy,
    reserve_bytes: int | None = None,
    now: float | None = None,
) -> Outbox:
    """Check, repair if needed, open the outbox, and record what was repaired."""
    when = time.time() if now is None else now
    mark = await asyncio.to_thread(load_mark, identity_dir, node_id)
    done = await asyncio.to_thread(recover, path, mark, when, None, node_id)

    def reopen() -> Awaitable[Outbox]:
        return Outbox.open(
            path,
            quota_bytes=quota_bytes,
            policy=policy,
            node=node_id,
            mark=mark,
            reserve_bytes=reserve_bytes,
        )

    try:
        outbox = await reopen()
    except sqlite3.DatabaseError as exc:  # passed quick_check, yet not an outbox
        done = await asyncio.to_thread(recover, path, mark, when, str(exc), node_id)
        outbox = await reopen()
    for type_, fields in done.events:
        await outbox.append(make_event(type_, node=node_id, now=when, **fields))
    return outbox
