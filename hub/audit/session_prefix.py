"""A session named by the first characters of its id (``tsh play 1a2b``), looked up in audit."""

from __future__ import annotations

from hub.storage.api import AuditLog
from remoteler.errors import UsageError

#: A session id prefix shorter than this is not looked up (tctl shows 8 characters).
MIN_SESSION_PREFIX = 4
#: How many candidate sessions an ambiguous prefix names.
MAX_CANDIDATES = 5


async def resolve_session_prefix(audit: AuditLog, prefix: str, user: str) -> str:
    """The one session of ``user`` whose id starts with ``prefix``; else ``prefix``.

    Raises UsageError naming up to :data:`MAX_CANDIDATES` ids when several match
    (only ``user``'s own: a prefix reveals nothing about other users' sessions).
    """
    if len(prefix) < MIN_SESSION_PREFIX:
        return prefix
    found = await audit.session_ids(prefix, user, MAX_CANDIDATES + 1)
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        more = ", ..." if len(found) > MAX_CANDIDATES else ""
        raise UsageError(
            f"session id {prefix[:64]!r} matches several of your sessions "
            f"({', '.join(found[:MAX_CANDIDATES])}{more}); give more characters"
        )
    return prefix
