"""The ``--storage postgresql://...`` URL: checked, its password read from a file, a pool.

The URL never carries a password (it ends up in shell history, ``ps`` and logs):
one in it is refused. The password comes from ``--storage-password-file`` (the
file's first line) or from libpq's own ``PGPASSFILE`` / ``~/.pgpass``. The query
parameter ``pool_size`` (default :data:`POOL_SIZE`) is the engine's, not libpq's;
every other one goes to libpq (``sslmode=verify-full``, ``sslrootcert=...``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from psycopg.conninfo import conninfo_to_dict

from hub.storage.api import StorageError

#: Connections each hub keeps open at most (plus one for LISTEN): docs/storage.md.
POOL_SIZE = 10
#: Seconds to wait for the server when connecting.
CONNECT_TIMEOUT = 10
#: libpq settings unless the URL gives its own: TCP keepalives, and the kernel drops a
#: connection whose sent bytes stay unacknowledged for 60 s (a dead link is found).
LINK_DEFAULTS: dict[str, object] = {
    "connect_timeout": CONNECT_TIMEOUT,
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
    "tcp_user_timeout": 60_000,
}
#: Seconds a call waits for a free pool connection before it fails (Unavailable).
POOL_WAIT = 30.0
#: Calls that may wait for a pool connection at once; more fail at once (Unavailable).
POOL_WAITING = 10_000
#: Seconds one statement may run on the server before it is cancelled.
STATEMENT_TIMEOUT = 60.0


@dataclass(frozen=True)
class Target:
    """Where to connect: a libpq URL with no password, and the password apart."""

    url: str
    password: str | None
    pool_size: int
    #: ``host:port/db`` for messages (no user, no password)
    where: str
    #: the libpq parameters the URL sets (defaults in :data:`LINK_DEFAULTS` do not override)
    params: frozenset[str] = frozenset()

    def __repr__(self) -> str:  # never the password
        return f"<Target {self.where}>"

    def kwargs(self) -> dict[str, object]:
        extra: dict[str, object] = {
            key: value for key, value in LINK_DEFAULTS.items() if key not in self.params
        }
        if self.password is not None:
            extra["password"] = self.password
        return extra


def parse_target(url: str, password_file: Path | None = None) -> Target:
    """Check ``url`` and read the password file; :class:`StorageError` with one line."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    pool_size = POOL_SIZE
    rest = []
    for key, value in query:
        if key == "pool_size":
            if not value.isdigit() or not 1 <= int(value) <= 100:
                raise StorageError("--storage: pool_size must be a number from 1 to 100")
            pool_size = int(value)
        else:
            rest.append((key, value))
    clean = urlunsplit(parts._replace(query=urlencode(rest)))
    try:
        params = conninfo_to_dict(clean)
    except Exception:  # libpq's parser: its message may quote the URL
        raise StorageError(
            "--storage: not a valid PostgreSQL URL: give postgresql://USER@HOST:PORT/DB"
        ) from None
    if params.get("password") or parts.password:
        raise StorageError(
            "--storage: the URL contains a password: put it in a file and give "
            "--storage-password-file FILE (or set PGPASSFILE) instead"
        )
    host, port = params.get("host") or "localhost", params.get("port") or 5432
    where = f"{host}:{port}/{params.get('dbname') or ''}"
    password = None
    if password_file is not None:
        try:
            lines = password_file.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or "not text"
            raise StorageError(f"--storage-password-file {password_file}: {reason}") from None
        if not lines or not lines[0]:
            raise StorageError(f"--storage-password-file {password_file} is empty")
        password = lines[0]
    return Target(clean, password, pool_size, where, frozenset(params))
