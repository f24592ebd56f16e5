"""The hub's SQLite files, checked before anything opens them.

``hub start`` runs ``PRAGMA quick_check`` on each database in its data dir
(``hub.db``, ``audit.db``, ``firmware/firmware.db``) before it serves: a damaged
file is one line naming it and what to do, and exit code 1, instead of an
"internal error" on whichever request first reads the bad page. ``quick_check``
reads every page once (it skips only the index-to-table cross-checks of
``integrity_check``): docs/tctl.md gives its cost on a large data dir.

It also refuses an empty audit trail next to a node table that has rows: an
``audit.db`` that is missing or zero bytes long while devices are enrolled means
the trail was lost or replaced by mistake (a restore of ``hub.db`` alone, a disk
wiped under the hub). ``--accept-empty-audit`` starts a new trail on purpose.

``tctl`` runs the same check only after a database error, to name the file.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from hub.audit_store import AuditStore, audit_db_path
from remoteler.errors import ConfigError


@dataclass(frozen=True)
class Database:
    """One of the hub's SQLite files."""

    #: path inside the data dir
    name: str
    #: what is lost if the file is moved aside, for the error line
    if_moved: str


HUB_DB = Database(
    "hub.db", "moving it aside loses users, roles and tokens, and every device must join again"
)
AUDIT_DB = Database(
    "audit.db", "or move it aside and start with --accept-empty-audit to begin a new audit trail"
)
FIRMWARE_DB = Database("firmware/firmware.db", "or move it aside (only roll-out history is lost)")
DATABASES = (HUB_DB, AUDIT_DB, FIRMWARE_DB)

#: seconds a check waits for a lock another process holds on a file (a running hub
#: never holds one that long in WAL mode; a tool in exclusive mode can)
BUSY_TIMEOUT = 10.0


def _busy(exc: sqlite3.Error) -> bool:
    """SQLITE_BUSY or SQLITE_LOCKED: another connection holds the file, which says
    nothing about its pages."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


#: the SQLite result codes that say the file's content is bad; any other error
#: (cannot open, read-only, full, I/O, permission) says nothing about its pages
_DAMAGE_CODES = (11, 26)  # SQLITE_CORRUPT, SQLITE_NOTADB


def _damage(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code is None or code & 0xFF in _DAMAGE_CODES


def _unreadable_line(path: Path, exc: sqlite3.Error) -> str:
    return (
        f"{path} cannot be opened for the check ({exc}): check that its file system is "
        "mounted read-write and not full, and that this user may write the file and "
        "its directory (the file itself may well be sound)"
    )


def _busy_line(path: Path) -> str:
    return (
        f"{path} is in use by another process (busy: a running hub, or a tool holding "
        "its lock), so it was not checked: stop that process, or try again"
    )


def quick_check(path: Path) -> str | None:
    """None if SQLite finds ``path`` sound, else what it found (first line).
    Raises :class:`ConfigError` if another process holds a lock on it past
    :data:`BUSY_TIMEOUT`: a locked file is not a damaged one."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=BUSY_TIMEOUT)
    except sqlite3.Error as exc:
        return str(exc)
    try:
        rows = db.execute("PRAGMA quick_check").fetchall()
    except sqlite3.Error as exc:
        if _busy(exc):
            raise ConfigError(_busy_line(path)) from None
        if not _damage(exc):
            raise ConfigError(_unreadable_line(path, exc)) from None
        return str(exc)
    finally:
        db.close()
    if rows == [("ok",)]:
        return None
    first = str(rows[0][0]) if rows else "no answer"
    return first.splitlines()[0][:200] + (f" (and {len(rows) - 1} more)" if len(rows) > 1 else "")


def check_database(data_dir: Path, database: Database) -> None:
    """Raise :class:`ConfigError` if ``database`` exists in ``data_dir`` and is damaged."""
    path = data_dir / database.name
    if not path.exists() or _empty(path):
        return
    problem = quick_check(path)
    if problem is not None:
        raise ConfigError(
            f"{path} is damaged ({problem}): stop the hub and restore it from a backup; "
            f"{database.if_moved}"
        )


def check_data_dir(data_dir: Path, *, accept_empty_audit: bool = False) -> None:
    """Check every database of the hub in ``data_dir``; raise :class:`ConfigError` on
    the first damaged one, or on an empty audit trail next to enrolled nodes unless
    ``accept_empty_audit``."""
    for database in DATABASES:
        check_database(data_dir, database)
    if not accept_empty_audit:
        check_audit_trail(data_dir)


def check_audit_trail(data_dir: Path) -> None:
    """Raise :class:`ConfigError` if ``audit.db`` is missing or empty while ``hub.db``
    lists nodes: the trail was lost, and only ``hub start --accept-empty-audit`` may
    begin a new one (so no other command may create the file)."""
    audit = data_dir / AUDIT_DB.name
    hub_db = data_dir / HUB_DB.name
    if not hub_db.exists() or not _empty(audit):
        return
    nodes = _count_nodes(hub_db)
    if nodes:
        raise ConfigError(
            f"{audit} is {'missing' if not audit.exists() else 'empty'} but {hub_db} "
            f"lists {nodes} node(s): the audit trail was lost; restore {AUDIT_DB.name} "
            "from a backup, or start with --accept-empty-audit to begin a new one"
        )


async def open_audit_store(data_dir: Path) -> AuditStore:
    """The hub's audit store for ``tctl``: refused (:func:`check_audit_trail`) where
    opening would create a new, valid ``audit.db`` over a lost trail, which ``hub
    start`` would then take as sound (and ``tctl audit search`` would show as empty)."""
    check_audit_trail(data_dir)
    return await AuditStore.open(audit_db_path(data_dir))


def _empty(path: Path) -> bool:
    """True if the file is missing or zero bytes (SQLite writes its header page as soon
    as a database is made: the hub's stores never leave a zero-byte file behind)."""
    try:
        return path.stat().st_size == 0
    except FileNotFoundError:
        return True


def _count_nodes(hub_db: Path) -> int:
    db = sqlite3.connect(f"file:{hub_db}?mode=rw", uri=True, timeout=BUSY_TIMEOUT)
    try:
        row = db.execute("SELECT count(*) FROM nodes").fetchone()
    except sqlite3.OperationalError as exc:
        if _busy(exc):
            raise ConfigError(_busy_line(hub_db)) from None
        return 0  # no nodes table yet: a hub that never started
    finally:
        db.close()
    return int(row[0])


def diagnose(data_dir: Path, err: sqlite3.DatabaseError) -> str:
    """The line for a database error a command met: the damaged file if a check finds
    one, else SQLite's words and where to look. A busy error is only that: the
    files are not checked (they would be busy too) nor called damaged."""
    if _busy(err) or "database is locked" in str(err):
        return (
            f"a database in {data_dir} is busy ({err}): another process held its lock "
            "too long (a hub under heavy load, or a tool holding it); try again"
        )
    try:
        for database in DATABASES:
            check_database(data_dir, database)
    except ConfigError as found:
        return str(found)
    if not _damage(err) or "disk is full" in str(err) or "readonly" in str(err):
        return (
            f"database error in {data_dir} ({err}): check the free space and permissions "
            "of that directory (its files passed SQLite's check)"
        )
    return (
        f"database error in {data_dir} ({err}): run 'hub start' to check its databases, "
        "or restore the data dir from a backup"
    )
