"""``tsh config`` writes our SSH algorithm lists, and the installed OpenSSH takes them:
``ssh -G`` (the configuration ssh would use) shows exactly those lists."""

from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path

from remoteler import sshalgs
from tsh.config import FALLBACK_KEX, openssh_kex, ssh_config


def ssh_g(config: Path) -> dict[str, str]:
    assert shutil.which("ssh"), "OpenSSH's ssh is missing: apt-get install openssh-client"
    run = subprocess.run(
        ["ssh", "-G", "-F", str(config), "pi@n1.fleet"],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert run.returncode == 0, run.stderr  # ssh refuses a file with a name it does not know
    return dict(line.split(" ", 1) for line in run.stdout.splitlines() if " " in line)


def test_openssh_uses_exactly_our_algorithms(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text(ssh_config("fleet", tmp_path / "alice", tmp_path / "kh", "/bin/tsh"))
    got = ssh_g(config)
    kex = openssh_kex()
    assert got["kexalgorithms"] == ",".join(kex)
    assert set(kex) <= set(sshalgs.KEX) and "curve25519-sha256" in kex
    assert got["ciphers"] == ",".join(sshalgs.CIPHERS)
    assert got["macs"] == ",".join(sshalgs.MACS)
    assert got["hostkeyalgorithms"] == ",".join(sshalgs.HOST_KEY_ALGS)


def test_kex_names_the_installed_ssh_does_not_know_are_left_out() -> None:
    known = subprocess.run(["ssh", "-Q", "kex"], capture_output=True, text=True).stdout.split()
    assert set(openssh_kex()) == set(sshalgs.KEX) & set(known)
    assert sshalgs.supported_kex(["curve25519-sha256", "ecdh-sha2-nistp256"]) == [
        "curve25519-sha256"
    ]
    assert all(alg in known for alg in FALLBACK_KEX)


def test_tsh_ssh_cipher_help_names_exactly_what_is_offered() -> None:
    """``tsh ssh -c``: the help lists the ciphers tsh accepts (sshalgs.CIPHERS), no more."""
    from tsh.cli import build_parser

    ssh = next(
        a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)
    ).choices["ssh"]
    text = next(a.help for a in ssh._actions if a.dest == "cipher") or ""
    assert all(c in text for c in sshalgs.CIPHERS), text
    assert "asyncssh offers" not in text and "ctr" not in text
