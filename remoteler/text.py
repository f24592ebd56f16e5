"""Text from another party (a device, a server's status message), made safe to print.

A device controls file names, SFTP status messages and refusal text. Printed as is, an
escape sequence in them reaches the operator's terminal (cursor moves, OSC 52 clipboard
writes; the OpenSSH CVE-2019-6109/6110 class). printable() is the one filter for it.
"""

from __future__ import annotations

REPLACEMENT = "?"
ELLIPSIS = "..."


def printable(text: str, limit: int = 200) -> str:
    """text with every non-printable character replaced by '?', at most limit characters.

    Non-printable is str.isprintable()'s meaning: C0/C1 controls (ESC, CR, LF, TAB, ...),
    DEL, Unicode format characters (bidi overrides and isolates, zero-width joiners),
    line/paragraph separators, non-ASCII spaces, surrogates (undecodable bytes under
    surrogateescape), private-use and unassigned code points. The plain space stays.
    A longer result is cut to limit characters, the last three being '...'.
    """
    if limit < 0:
        raise ValueError("limit must not be negative")
    clean = "".join(c if c.isprintable() else REPLACEMENT for c in text)
    if len(clean) <= limit:
        return clean
    if limit <= len(ELLIPSIS):
        return clean[:limit]
    return clean[: limit - len(ELLIPSIS)] + ELLIPSIS
