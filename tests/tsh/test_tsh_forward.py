"""``tsh ssh -L`` specs, read as ssh reads them."""

from __future__ import annotations

import pytest

from remoteler.errors import UsageError
from tsh.forward import LocalForward, parse_local_forward


@pytest.mark.parametrize(
    ("spec", "want"),
    [
        ("8080:localhost:80", LocalForward("127.0.0.1", 8080, "localhost", 80)),
        ("0.0.0.0:8080:10.0.0.5:502", LocalForward("0.0.0.0", 8080, "10.0.0.5", 502)),
        ("localhost:8080:plc:502", LocalForward("127.0.0.1", 8080, "plc", 502)),
        ("*:8080:plc:502", LocalForward("", 8080, "plc", 502)),
        ("[::1]:8080:[fe80::1]:22", LocalForward("::1", 8080, "fe80::1", 22)),
        ("0:127.0.0.1:80", LocalForward("127.0.0.1", 0, "127.0.0.1", 80)),
    ],
)
def test_parse(spec: str, want: LocalForward) -> None:
    assert parse_local_forward(spec) == want


@pytest.mark.parametrize(
    "spec",
    ["", "8080", "8080:host", "x:8080:host", "8080::80", "8080:h:0", "70000:h:80", "8080:h:1:2"],
)
def test_bad_specs_are_usage_errors(spec: str) -> None:
    with pytest.raises(UsageError, match="-L"):
        parse_local_forward(spec)
