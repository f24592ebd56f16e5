"""remoteler/notice.py: a hub's notice reaches the terminal as one harmless line."""

from __future__ import annotations

from remoteler.notice import MAX_NOTICE, notice_line


def test_notice_is_one_printable_capped_line() -> None:
    assert notice_line("hub restarting: this session ends in 30 s") == (
        "hub restarting: this session ends in 30 s"
    )
    assert notice_line("a\nb\x1b]52;c;AAAA\x07") == "a?b?]52;c;AAAA?"
    long = notice_line("x" * 5000)
    assert len(long) == MAX_NOTICE and long.endswith("...")
