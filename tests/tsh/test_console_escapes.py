"""tsh console's escape parser: whole chunks, one byte at a time, and any bytes at all."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tsh.escapes import Action, Break, EscapeParser, Help, Quit, Send, SetBaud


def _bytewise(data: bytes) -> list[Action]:
    parser = EscapeParser()
    out: list[Action] = []
    for i in range(len(data)):
        out += parser.feed(data[i : i + 1])
    return _merge(out)


def _merge(actions: list[Action]) -> list[Action]:
    """Adjacent sends as one, so chunked and whole feeds compare equal."""
    out: list[Action] = []
    for action in actions:
        if isinstance(action, Send) and out and isinstance(out[-1], Send):
            out[-1] = Send(out[-1].data + action.data)
        else:
            out.append(action)
    return out


CASES = [
    (b"ls\r", [Send(b"ls\r")]),
    (b"~.", [Quit()]),
    (b"abc\r~.", [Send(b"abc\r"), Quit()]),
    (b"abc~.", [Send(b"abc~.")]),  # mid-line: not an escape
    (b"\n~B~B", [Send(b"\n"), Break(), Break()]),  # a break leaves us at a line start
    (b"~b9600\r", [SetBaud("9600")]),
    (b"~b 19200\n", [SetBaud("19200")]),
    (b"~b96x\x7f00\r", [SetBaud("9600")]),  # erase works while typing the rate
    (b"~b96\x03x", [Send(b"x")]),  # Ctrl-C gives up on the rate
    (b"~?", [Help()]),
    (b"~~.", [Send(b"~.")]),
    (b"~x", [Send(b"~x")]),
    (b"~\r~.", [Send(b"~\r"), Quit()]),
]


def test_escapes_whole_and_bytewise() -> None:
    for data, want in CASES:
        assert _merge(EscapeParser().feed(data)) == want, data
        assert _bytewise(data) == want, data


@given(st.binary(max_size=200))
def test_any_input_without_tilde_passes_through(data: bytes) -> None:
    data = data.replace(b"~", b"")
    sent = b"".join(a.data for a in EscapeParser().feed(data) if isinstance(a, Send))
    assert sent == data


@given(st.lists(st.binary(max_size=40), max_size=20))
def test_chunking_never_changes_the_outcome(chunks: list[bytes]) -> None:
    parser = EscapeParser()
    got: list[Action] = []
    for chunk in chunks:
        got += parser.feed(chunk)
    assert _merge(got) == _merge(EscapeParser().feed(b"".join(chunks)))
