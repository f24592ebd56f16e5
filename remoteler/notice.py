"""Notices from the hub to a user's open session, beside the end-to-end SSH bytes.

The hub only relays SSH on ``/v1/connect`` (binary websocket messages) and cannot
write into the encrypted stream. A client that asks for notices (the query
parameter :data:`NOTICE_PARAM` ``=1``) may also receive *text* messages: one line
each, for the user (tsh prints it on stderr). A client that does not ask gets
none, so older clients, which end the session on a text message, see no change.
"""

from __future__ import annotations

from typing import Final

from remoteler.text import printable

#: ``/v1/connect?...&notices=1``: the client shows text messages as notice lines.
NOTICE_PARAM: Final = "notices"
#: Longest notice shown (characters); the rest is cut.
MAX_NOTICE: Final = 300


def notice_line(text: str) -> str:
    """A notice as one printable line (controls, newlines included, replaced; capped):
    what reaches the user's terminal must not be able to drive it."""
    return printable(text, MAX_NOTICE)


__all__ = ["MAX_NOTICE", "NOTICE_PARAM", "notice_line"]
