"""``tsh proxy ssh`` target parsing and the ``tsh config`` block, without sockets."""

from __future__ import annotations

from pathlib import Path

import pytest

from remoteler.errors import UsageError
from tsh.config import ssh_config
from tsh.proxy import parse_target


@pytest.mark.parametrize(
    ("target", "want"),
    [
        ("pi@truck-042.fleet:22", ("pi", "truck-042")),
        ("pi@truck-042:22", ("pi", "truck-042")),
        ("pi@truck-042", ("pi", "truck-042")),
        ("pi@[truck-042.fleet]:2222", ("pi", "truck-042")),
        ("a@b@truck.fleet.fleet:22", ("a@b", "truck.fleet")),
        ("pi@truck-042.other:22", ("pi", "truck-042.other")),
    ],
)
def test_parse_target(target: str, want: tuple[str, str]) -> None:
    assert parse_target(target, "fleet") == want


@pytest.mark.parametrize("target", ["truck-042.fleet:22", "pi@:22", "pi@.fleet:22"])
def test_parse_target_needs_login_and_node(target: str) -> None:
    with pytest.raises(UsageError, match="login and the node"):
        parse_target(target, "fleet")


def test_ssh_config_block() -> None:
    text = ssh_config("fleet", Path("/h/.tsh/keys/hub/alice"), Path("/h/kh"), '"/bin/tsh"')
    lines = [line.strip() for line in text.splitlines()]
    assert "Host *.fleet" in lines
    assert 'ProxyCommand "/bin/tsh" proxy ssh %r@%h:%p' in lines
    assert 'IdentityFile "/h/.tsh/keys/hub/alice"' in lines
    assert 'CertificateFile "/h/.tsh/keys/hub/alice-cert.pub"' in lines
    assert 'UserKnownHostsFile "/h/kh"' in lines
    assert "StrictHostKeyChecking yes" in lines
