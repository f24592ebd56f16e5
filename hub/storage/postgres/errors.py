"""psycopg's exceptions as :mod:`hub.storage.api` errors, one line, no secret in them."""

from __future__ import annotations

import psycopg
from psycopg import errors as pg_errors
from psycopg_pool import PoolTimeout, TooManyRequests

from hub.storage.api import Conflict, StorageError, Unavailable


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0].strip() if text else type(exc).__name__


def translate(exc: BaseException, where: str) -> StorageError:
    """The :class:`StorageError` for ``exc`` (raised by psycopg or its pool)."""
    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, pg_errors.UniqueViolation | pg_errors.ExclusionViolation):
        return Conflict(f"already exists: {first_line(exc)}")
    if isinstance(exc, pg_errors.SerializationFailure | pg_errors.DeadlockDetected):
        return Conflict(f"lost to a concurrent write: {first_line(exc)}")
    if isinstance(exc, pg_errors.InvalidPassword | pg_errors.InvalidAuthorizationSpecification):
        return Unavailable(
            f"PostgreSQL at {where} refused the login: {first_line(exc)} "
            "(check the user, --storage-password-file or PGPASSFILE)"
        )
    if isinstance(exc, TooManyRequests):
        return Unavailable(f"PostgreSQL at {where}: too many calls waiting for a connection")
    if isinstance(exc, pg_errors.QueryCanceled):
        return Unavailable(f"PostgreSQL at {where}: a statement ran out of time")
    if isinstance(exc, PoolTimeout):
        return Unavailable(f"PostgreSQL at {where}: no connection free or reachable in time")
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return Unavailable(f"PostgreSQL at {where} is unavailable: {first_line(exc)}")
    return StorageError(f"PostgreSQL at {where}: {first_line(exc)}")
