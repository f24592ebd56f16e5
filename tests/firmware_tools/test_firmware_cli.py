"""``firmware-tools``: real subprocess runs for the main paths, in-process for the rest."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from firmware_tools.cli import build_parser, main
from firmware_tools.errors import (
    AgentTooOld,
    AlreadyInstalled,
    BundleTampered,
    DowngradeRefused,
    TargetMismatch,
    UntrustedSigner,
)


def run(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "firmware_tools.cli", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    payload = tmp_path / "payload"
    payload.mkdir()
    (payload / "install.sh").write_text("#!/bin/sh\nexit 0\n")
    (payload / "install.sh").chmod(0o755)
    (payload / "rootfs.img").write_bytes(b"\x7fIMG" * 1000)
    assert main(["key", "generate", "-o", str(tmp_path / "fw.key")]) == 0
    assert main(["key", "generate", "-o", str(tmp_path / "other.key")]) == 0
    return tmp_path


def test_key_build_inspect_verify_as_processes(workdir: Path) -> None:
    gen = run("key", "generate", "-o", "offline.key", cwd=workdir)
    assert gen.returncode == 0, gen.stderr
    assert gen.stdout.startswith("ssh-ed25519 ")
    assert (workdir / "offline.key").stat().st_mode & 0o777 == 0o600
    build = run(
        "bundle", "build", "--payload", "payload", "--name", "gw", "--version", "1.4.0",
        "--target", "board=rpi4", "--target", "site=b*", "--min-agent-version", "0.1",
        "--install-hook", "install.sh", "--key", "offline.key", "-o", "gw.bundle",
        cwd=workdir,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    inspect = run("bundle", "inspect", "gw.bundle", "--key", "offline.key.pub", "--format", "json",
                  cwd=workdir)  # fmt: skip
    assert inspect.returncode == 0, inspect.stderr
    doc = json.loads(inspect.stdout)
    assert doc["targets"] == {"board": "rpi4", "site": "b*"}
    assert doc["signature"] == "good"
    device = ("--key", "offline.key.pub", "--labels", "board=rpi4,site=berlin")
    ok = run("bundle", "verify", "gw.bundle", *device, "--installed-version", "1.3", cwd=workdir)
    assert (ok.returncode, ok.stderr) == (0, "")
    assert ok.stdout.startswith("ok: gw 1.4.0")
    down = run("bundle", "verify", "gw.bundle", *device, "--installed-version", "2.0", cwd=workdir)
    assert down.returncode == DowngradeRefused.exit_code
    assert down.stderr.count("\n") == 1
    assert "--force" in down.stderr
    wrong = run("bundle", "verify", "gw.bundle", "--key", "fw.key.pub",
                "--labels", "board=rpi4,site=berlin", cwd=workdir)  # fmt: skip
    assert wrong.returncode == UntrustedSigner.exit_code
    assert wrong.stderr.startswith("firmware-tools: untrusted signer: bundle is signed by SHA256:")


def _build(workdir: Path, *extra: str) -> Path:
    out = workdir / "b.bundle"
    code = main(
        ["bundle", "build", "--payload", str(workdir / "payload"), "--name", "gw",
         "--version", "1.4.0", "--target", "board=rpi4", "--min-agent-version", "0.2",
         "--install-hook", "install.sh", "--key", str(workdir / "fw.key"), "-o", str(out),
         *extra]
    )  # fmt: skip
    assert code == 0
    return out


def verify(workdir: Path, bundle: Path, *extra: str) -> int:
    return main(
        ["bundle", "verify", str(bundle), "--key", str(workdir / "fw.key.pub"),
         "--labels", "board=rpi4", "--agent-version", "0.2", *extra]
    )  # fmt: skip


def test_exit_code_per_refusal(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bundle = _build(workdir)
    assert verify(workdir, bundle, "--installed-version", "1.3") == 0
    assert verify(workdir, bundle, "--installed-version", "1.4") == AlreadyInstalled.exit_code
    assert verify(workdir, bundle, "--installed-version", "1.4", "--force") == 0
    assert verify(workdir, bundle, "--installed-version", "1.5") == DowngradeRefused.exit_code
    assert verify(workdir, bundle, "--installed-version", "1.5", "--force") == 0
    assert verify(workdir, bundle, "--labels", "board=rpi3") == TargetMismatch.exit_code
    assert verify(workdir, bundle, "--agent-version", "0.1.9") == AgentTooOld.exit_code
    data = bytearray(bundle.read_bytes())
    data[-1] ^= 0xFF
    bundle.write_bytes(bytes(data))
    assert verify(workdir, bundle) == BundleTampered.exit_code
    codes = {
        c.exit_code
        for c in (
            AgentTooOld, AlreadyInstalled, BundleTampered, DowngradeRefused,
            TargetMismatch, UntrustedSigner,
        )
    }  # fmt: skip
    assert len(codes) == 6 and not codes & {0, 1, 2}
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 5 and all(line.startswith("firmware-tools: ") for line in err)


def test_inspect_text_and_bad_signature(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bundle = _build(workdir)
    other = str(workdir / "other.key.pub")
    assert main(["bundle", "inspect", str(bundle), "--key", other]) == UntrustedSigner.exit_code
    out = capsys.readouterr().out
    assert "version:      1.4.0" in out
    assert "signature:    BAD: bundle is signed by" in out
    not_bundle = str(workdir / "payload" / "rootfs.img")
    assert main(["bundle", "inspect", not_bundle]) == BundleTampered.exit_code
    assert "tampered bundle: not a firmware bundle (bad magic)" in capsys.readouterr().err


def test_usage_errors_are_one_line(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["key", "generate", "-o", str(workdir / "fw.key")]) == 1
    assert "exists" in capsys.readouterr().err
    code = main(
        ["bundle", "build", "--payload", str(workdir / "payload"), "--name", "gw",
         "--version", "v1", "--target", "board=rpi4", "--min-agent-version", "0.2",
         "--install-hook", "install.sh", "--key", str(workdir / "fw.key"), "-o",
         str(workdir / "x.bundle")]
    )  # fmt: skip
    assert code == 2
    assert capsys.readouterr().err.startswith("firmware-tools: bad version: use dotted numbers")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bundle", "build", "--target", "nokey"])
    assert main(["key", "id", str(workdir / "fw.key")]) == 0
    assert main(["key", "id", str(workdir / "fw.key.pub")]) == 0
    one, two = capsys.readouterr().out.split()
    assert one == two and one.startswith("SHA256:")
