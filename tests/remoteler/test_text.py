"""remoteler.text.printable: node-controlled text made safe for a terminal."""

from __future__ import annotations

import pytest

from remoteler.text import printable


def test_plain_text_unchanged() -> None:
    assert printable("file name-1.txt") == "file name-1.txt"
    assert printable("Grüße, 日本語") == "Grüße, 日本語"
    assert printable("") == ""


@pytest.mark.parametrize(
    "bad",
    [
        "\x1b",  # ESC
        "\x00",
        "\x07",  # BEL
        "\t",
        "\n",
        "\r",
        "\x7f",  # DEL
        "\x9b",  # C1 CSI
        "\x85",  # C1 NEL
        "\u202e",  # RIGHT-TO-LEFT OVERRIDE
        "\u2066",  # LEFT-TO-RIGHT ISOLATE
        "\u200b",  # ZERO WIDTH SPACE
        "\u2028",  # LINE SEPARATOR
        "\ufeff",  # BOM / ZWNBSP
        "\udcff",  # surrogate (undecodable byte under surrogateescape)
        "\ue000",  # private use
    ],
)
def test_non_printable_replaced(bad: str) -> None:
    assert printable(f"a{bad}b") == "a?b"


def test_escape_sequences_defused() -> None:
    osc52 = "x\x1b]52;c;ZXZpbA==\x07y"
    out = printable(osc52)
    assert "\x1b" not in out and "\x07" not in out
    assert out == "x?]52;c;ZXZpbA==?y"
    assert printable("\x1b[2J\x1b[H") == "?[2J?[H"


def test_truncated_to_limit() -> None:
    assert printable("a" * 200) == "a" * 200
    out = printable("a" * 500)
    assert len(out) == 200 and out.endswith("...")
    assert printable("abcdef", limit=5) == "ab..."
    assert printable("abcdef", limit=2) == "ab"
    assert printable("abcdef", limit=0) == ""
    # The limit counts the replaced text: one '?' per removed character.
    assert printable("\x1b" * 10, limit=4) == "?..."


def test_negative_limit_refused() -> None:
    with pytest.raises(ValueError):
        printable("x", limit=-1)
