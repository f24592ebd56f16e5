"""The outbox's start-up check: a damaged ``audit.db`` is set aside and salvaged, never fatal.

Blocking :mod:`sqlite3` code, run once before the outbox opens
(:mod:`edge_agent.outbox_open` calls it from a thread):

1. :func:`check_outbox`: is ``audit.db`` missing, empty (0 bytes), or does
   ``PRAGMA quick_check`` fail (or the file not open as SQLite at all)?
2. :func:`salvage`: the damaged file is opened read-only where it is and every
   row that can still be read is taken, scanning in seq order and, past a
   damaged page, probing seq numbers one at a time (each read catching
   :class:`sqlite3.DatabaseError`); a row must also decode as a valid event.
3. :func:`write_rows`: the salvaged rows go into a fresh outbox (first under
   another name) with their original seq, id and bytes, so the hub stores each
   at most once.
4. :func:`move_aside`: the damaged file (with its ``-wal``) is renamed
   ``audit.db.corrupt-<UTC time>`` and kept for forensics; nothing deletes it.
   :mod:`edge_agent.outbox_open` then renames the fresh outbox into place.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import msgpack

from edge_agent.outbox import SCHEMA
from remoteler.audit.events import AuditEvent
from remoteler.audit.stream import MAX_SEQ

__all__ = [
    "Check",
    "Row",
    "Salvage",
    "aside_path",
    "check_outbox",
    "move_aside",
    "salvage",
    "write_rows",
]

log = logging.getLogger("remoteler.agent.outbox")

State = Literal["ok", "missing", "empty", "corrupt"]

#: seq numbers probed one at a time past a damaged page before the scan resumes
PROBE_WINDOW = 256
#: most single-row probes in one salvage (bounds its time on a huge, shredded file)
MAX_PROBES = 200_000
_MAGIC = b"SQLite format 3\x00"
_BTREE_PAGE_TYPES = {2, 5, 10, 13}


@dataclass(frozen=True)
class Check:
    """What :func:`check_outbox` found."""

    state: State
    detail: str = ""
    """For ``corrupt``: the first line of quick_check or the error, for the log."""


@dataclass(frozen=True)
class Row:
    """One salvaged outbox row, as it was stored."""

    seq: int
    id: str
    type: str
    time: float
    body: bytes


@dataclass(frozen=True)
class Salvage:
    """What :func:`salvage` read back from a damaged outbox."""

    rows: tuple[Row, ...]
    pages: int
    """Pages in the file (its size over its page size)."""
    pages_lost: int
    """Pages that are neither a valid b-tree page nor a plausible overflow/free page."""
    last_seq: int
    """The highest seq seen (row or ``sqlite_sequence``), 0 if none."""


def check_outbox(path: Path) -> Check:
    """Check the outbox file at ``path`` (read-only; the caller acts on the answer)."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return Check("missing")
    if size == 0:
        return Check("empty")
    try:
        with contextlib.closing(_connect_ro(path)) as db:
            rows = db.execute("PRAGMA quick_check").fetchall()
            db.execute("SELECT seq, id, type, time, size, body FROM events LIMIT 0").fetchall()
            top = db.execute(
                "SELECT max(coalesce((SELECT max(seq) FROM events), 0),"
                " coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0))"
            ).fetchone()
    except sqlite3.DatabaseError as exc:  # "file is not a database", "malformed", no table
        return Check("corrupt", str(exc))
    if rows != [("ok",)]:
        return Check("corrupt", str(rows[0][0]).splitlines()[0] if rows else "no answer")
    if top is None or not isinstance(top[0], int) or top[0] > MAX_SEQ:
        return Check("corrupt", "sequence number out of range")  # e.g. a bit flipped in it
    return Check("ok")


def aside_path(path: Path, now: float) -> Path:
    """Where :func:`move_aside` puts ``path``: ``audit.db.corrupt-YYYYmmddTHHMMSSZ``
    (``.N`` added if taken)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while aside.exists():
        aside = path.with_name(f"{path.name}.corrupt-{stamp}.{n}")
        n += 1
    return aside


def move_aside(path: Path, now: float, aside: Path | None = None) -> Path:
    """Rename ``path`` (and its ``-wal``; the ``-shm`` is dropped) out of the way, to
    ``aside`` or :func:`aside_path`; return the new name."""
    aside = aside or aside_path(path, now)
    os.replace(path, aside)
    wal = path.with_name(path.name + "-wal")
    if wal.exists():
        os.replace(wal, aside.with_name(aside.name + "-wal"))
    path.with_name(path.name + "-shm").unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return aside


def salvage(path: Path, hi: int = 0) -> Salvage:
    """Every event still readable in the damaged outbox at ``path`` (opened read-only).

    ``hi`` is the highest seq that may exist (the high-water mark): past a damaged
    page the seq numbers up to it are probed one by one.
    """
    pages, pages_lost = count_pages(path)
    rows: dict[int, Row] = {}
    try:
        db = _connect_ro(path)
    except sqlite3.DatabaseError:
        return Salvage((), pages, pages_lost, 0)
    with contextlib.closing(db):
        with contextlib.suppress(sqlite3.DatabaseError):
            found = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
            if found and isinstance(found[0], int) and found[0] <= MAX_SEQ:
                hi = max(hi, found[0])
        last, probes = 0, 0
        while True:
            try:
                cur = db.execute(_SELECT + " WHERE seq > ? ORDER BY seq", (last,))
                for raw in cur:
                    last = _take(raw, rows)
                break
            except sqlite3.DatabaseError:
                pass
            # A damaged page after ``last``: probe the next seq numbers one by one
            # (up to ``hi``; with no bound past ``last``, one window and stop).
            bounded = hi > last
            end = min(hi, last + PROBE_WINDOW) if bounded else last + PROBE_WINDOW
            for seq in range(last + 1, end + 1):
                probes += 1
                with contextlib.suppress(sqlite3.DatabaseError):
                    raw = db.execute(_SELECT + " WHERE seq = ?", (seq,)).fetchone()
                    if raw is not None:
                        _take(raw, rows)
            last = end
            if not bounded or last >= hi or probes >= MAX_PROBES:
                break
    ordered = tuple(rows[s] for s in sorted(rows))
    return Salvage(ordered, pages, pages_lost, max(hi, max(rows, default=0)))


def write_rows(path: Path, rows: tuple[Row, ...]) -> None:
    """Create a fresh outbox at ``path`` (mode 0600) holding ``rows`` with their seq,
    durable in that one file when this returns (a rollback journal, not a ``-wal``
    left behind, so the file alone may be renamed; the outbox turns WAL on at open)."""
    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA journal_mode=DELETE")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(SCHEMA)
        db.executemany(
            "INSERT INTO events (seq, id, type, time, size, body) VALUES (?, ?, ?, ?, ?, ?)",
            [(r.seq, r.id, r.type, r.time, len(r.body), r.body) for r in rows],
        )
        db.commit()


def count_pages(path: Path) -> tuple[int, int]:
    """(pages, pages lost): a page is lost unless it looks like a b-tree page or an
    overflow/free-list page (first 4 bytes a page number in the file, or 0).

    Read one page at a time: a damaged outbox may be hundreds of MiB on a device
    with less memory than that.
    """
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            header = f.read(100)
            page_size = 4096
            if header[:16] == _MAGIC:
                raw = int.from_bytes(header[16:18], "big")
                page_size = (
                    65536 if raw == 1 else raw if raw >= 512 and raw & (raw - 1) == 0 else 4096
                )
            pages = -(-size // page_size)
            if header[:16] != _MAGIC:
                return pages, pages
            lost = 0
            f.seek(page_size)  # page 1 holds the header, checked above
            for _ in range(1, pages):
                page = f.read(page_size)
                if not page:  # the file shrank meanwhile
                    break
                if page[0] in _BTREE_PAGE_TYPES and _plausible_btree(page, page_size):
                    continue
                if int.from_bytes(page[:4], "big") <= pages:
                    continue
                lost += 1
    except OSError:
        return 0, 0
    return pages, lost


def _plausible_btree(page: bytes, page_size: int) -> bool:
    cells = int.from_bytes(page[3:5], "big")
    content = int.from_bytes(page[5:7], "big") or 65536
    header = 12 if page[0] in (2, 5) else 8
    return header + 2 * cells <= content <= page_size


_SELECT = "SELECT seq, id, body FROM events"
_ID = re.compile(r"[0-7][0-9A-HJKMNP-TV-Z]{25}")


def _take(raw: tuple[object, ...], rows: dict[int, Row]) -> int:
    """Keep one row if it decodes as a valid event; return its seq."""
    seq, event_id, body = raw
    assert isinstance(seq, int)
    if seq > MAX_SEQ:  # damaged: it would stop numbering (SQLite's INTEGER ends at 2**63)
        return seq
    if not (isinstance(body, bytes) and isinstance(event_id, str) and _ID.fullmatch(event_id)):
        return seq
    try:
        wire = msgpack.unpackb(body, raw=False)
        wire["seq"] = seq
        event = AuditEvent.from_wire(wire)
    except Exception:  # any damage in the bytes: the row is lost
        return seq
    if event.id == event_id:
        rows[seq] = Row(seq, event.id, event.type, event.time, body)
    return seq


def _connect_ro(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
