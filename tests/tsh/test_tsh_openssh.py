"""``tsh proxy ssh`` target parsing and the ``tsh config`` block, without sockets."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from require import require_binary

from remoteler.errors import UsageError
from tsh.config import ssh_config, tsh_command
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


def test_ssh_runs_the_proxy_command_with_a_space_and_a_percent_in_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ssh expands %-tokens and runs ProxyCommand with the shell: paths arrive intact."""
    require_binary("ssh")
    odd = tmp_path / "my dir %h 50% $HOME 'q'"
    odd.mkdir()
    argv_file = tmp_path / "argv"
    fake = odd / "tsh"  # stands in for tsh: records TSH_HOME and its arguments, then exits
    fake.write_text(
        f'#!/bin/sh\nfor a in "$TSH_HOME" "$@"; do printf "%s\\n" "$a"; done > {argv_file}\n'
    )
    fake.chmod(0o755)
    monkeypatch.setattr(sys, "argv", [str(fake)])
    monkeypatch.setenv("TSH_HOME", str(odd / "home"))
    key = odd / "alice"
    tsh = f"{tsh_command()} -i {shlex.quote(str(key))}"  # as 'tsh -i KEY config' writes it
    config = tmp_path / "config"
    config.write_text(ssh_config("fleet", key, odd / "kh", tsh))
    run = subprocess.run(
        ["ssh", "-F", str(config), "-o", "BatchMode=yes", "pi@n1.fleet", "true"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "SSH_AUTH_SOCK": ""},
    )
    assert run.returncode == 255  # the stand-in said nothing: no SSH server there
    assert argv_file.read_text().splitlines() == [
        str(odd / "home"), "-i", str(key), "proxy", "ssh", "pi@n1.fleet:22"
    ]  # fmt: skip
