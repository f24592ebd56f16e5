from __future__ import annotations

import pytest

from remoteler.addr import format_hostport, parse_hostport, parse_labels, parse_ttl
from remoteler.errors import UsageError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:3080", ("127.0.0.1", 3080)),
        ("hub.example:443", ("hub.example", 443)),
        ("[::1]:3080", ("::1", 3080)),
        (":3080", ("127.0.0.1", 3080)),
    ],
)
def test_parse_hostport(text: str, expected: tuple[str, int]) -> None:
    assert parse_hostport(text) == expected
    host, port = expected
    assert parse_hostport(format_hostport(host, port)) == expected


@pytest.mark.parametrize("text", ["nohost", "h:99999", "h:abc", "[::1]x", "::1"])
def test_parse_hostport_errors_say_what_to_do(text: str) -> None:
    with pytest.raises(UsageError, match=r"HOST:PORT|port"):
        parse_hostport(text)


def test_labels() -> None:
    assert parse_labels("env=prod, site=berlin,") == {"env": "prod", "site": "berlin"}
    assert parse_labels("") == {}
    for bad in ("env", "=x", "a b=c", "k=v;rm -rf"):
        with pytest.raises(UsageError, match="key=value"):
            parse_labels(bad)


def test_ttl() -> None:
    assert parse_ttl("90") == 90
    assert parse_ttl("15m") == 900
    assert parse_ttl("8h") == 8 * 3600
    assert parse_ttl("2d") == 2 * 86400
    for bad in ("0", "-1h", "h", "1w", ""):
        with pytest.raises(UsageError, match="duration"):
            parse_ttl(bad)


def test_valid_labels() -> None:
    from remoteler.addr import valid_labels

    assert valid_labels({"env": "prod"})
    assert valid_labels({})
    for bad in ([], {"env": 1}, {"a b": "c"}, {"k": "v;x"}, {f"k{i}": "v" for i in range(65)}):
        assert not valid_labels(bad)


def test_label_values_with_a_trailing_newline_are_refused() -> None:
    from remoteler.addr import valid_labels

    # "$" also matches before a final newline: labels from heartbeats must not carry one.
    assert not valid_labels({"env": "prod\n"})
    assert not valid_labels({"env\n": "prod"})
