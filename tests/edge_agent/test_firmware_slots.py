"""A/B slots and the installer with real files, real bundles and real hook scripts."""

from __future__ import annotations

import asyncio
import hashlib
import os
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edge_agent.firmware import Staging
from edge_agent.firmware_install import Firmware, InstallConfig, Installer, _run
from edge_agent.slots import Pending, Slots
from firmware_tools.archive import safe_extract
from firmware_tools.bundle import Manifest, build_bundle, read_header
from firmware_tools.keys import load_signing_key, write_key_pair

OK_HOOK = '#!/bin/sh\necho "$REMOTELER_FW_VERSION" > installed-by-hook\n'
FAIL_HOOK = "#!/bin/sh\necho 'flash write failed' >&2\nexit 3\n"
RESTART_HOOK = '#!/bin/sh\ntouch "$REMOTELER_FW_RESTART_FILE"\n'


def _bundle(tmp: Path, version: str, hook: str) -> tuple[Path, Manifest]:
    key_path = tmp / "signing.key"
    if not key_path.exists():
        write_key_pair(key_path)
    payload = tmp / f"payload-{version}"
    payload.mkdir()
    (payload / "firmware.bin").write_bytes(os.urandom(2048))
    script = payload / "install.sh"
    script.write_text(hook)
    script.chmod(0o755)
    out = tmp / f"fw-{version}.bundle"
    manifest = build_bundle(
        payload,
        out,
        name="gw-fw",
        version=version,
        targets={"board": "*"},
        min_agent_version="0.1.0",
        install_hook="install.sh",
        key=load_signing_key(key_path),
    )
    return out, manifest


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.states: list[str] = []

    async def audit(self, type: str, **fields: Any) -> None:
        self.events.append((type, fields))

    async def report(self, state: str, detail: str) -> None:
        self.states.append(state)

    def types(self) -> list[str]:
        return [t for t, _ in self.events]


def _installer(
    root: Path, rec: Recorder, health: str | None = None, clock: Callable[[], float] | None = None
) -> Installer:
    config = InstallConfig(node="dev1", data_dir=root, health_check=health)
    if clock is not None:
        config.clock = clock
    return Installer(Slots(root / "firmware"), config, rec.audit)


async def _install(inst: Installer, bundle: Path, manifest: Manifest, rec: Recorder) -> Any:
    sha = hashlib.sha256(bundle.read_bytes()).hexdigest()
    offset = read_header(bundle)[2]
    return await inst.install(
        Firmware(sha, "r1", manifest.version),
        manifest,
        lambda slot: safe_extract(bundle, slot, offset=offset),
        rec.report,
    )


def test_install_switches_slot_and_a_second_install_uses_the_other(tmp_path: Path) -> None:
    rec = Recorder()
    inst = _installer(tmp_path, rec, health='test -f "$REMOTELER_FW_SLOT/firmware.bin"')
    bundle, manifest = _bundle(tmp_path, "1.0.0", OK_HOOK)
    result = asyncio.run(_install(inst, bundle, manifest, rec))
    assert (result.state, result.version) == ("installed", "1.0.0")
    slots = inst.slots
    assert slots.current() == "a" and slots.version() == "1.0.0"
    assert (slots.root / "current" / "installed-by-hook").read_text().strip() == "1.0.0"
    assert rec.states == ["staging", "installing", "health-check"]
    assert rec.types() == ["firmware.install", "firmware.installed"]
    assert slots.pending() is None
    bundle2, manifest2 = _bundle(tmp_path, "1.1.0", OK_HOOK)
    result = asyncio.run(_install(inst, bundle2, manifest2, rec))
    assert result.state == "installed"
    assert slots.current() == "b" and slots.version() == "1.1.0"
    assert slots.version("a") == "1.0.0"  # the previous firmware stays for a rollback


def test_a_failing_install_hook_keeps_the_old_slot(tmp_path: Path) -> None:
    rec = Recorder()
    inst = _installer(tmp_path, rec)
    good, m1 = _bundle(tmp_path, "1.0.0", OK_HOOK)
    asyncio.run(_install(inst, good, m1, rec))
    bad, m2 = _bundle(tmp_path, "2.0.0", FAIL_HOOK)
    result = asyncio.run(_install(inst, bad, m2, rec))
    assert result.state == "rolled-back"
    assert "install hook exited 3" in result.detail and "flash write failed" in result.detail
    assert inst.slots.current() == "a" and inst.slots.version() == "1.0.0"
    assert list(inst.slots.path("b").iterdir()) == []  # the half-installed slot is emptied
    assert inst.slots.result(hashlib.sha256(bad.read_bytes()).hexdigest()) == result
    assert rec.types()[-1] == "firmware.rollback"


def test_a_failing_health_check_rolls_back_to_the_previous_slot(tmp_path: Path) -> None:
    rec = Recorder()
    inst = _installer(tmp_path, rec, health='test "$REMOTELER_FW_VERSION" != 2.0.0')
    good, m1 = _bundle(tmp_path, "1.0.0", OK_HOOK)
    assert asyncio.run(_install(inst, good, m1, rec)).state == "installed"
    bad, m2 = _bundle(tmp_path, "2.0.0", OK_HOOK)
    result = asyncio.run(_install(inst, bad, m2, rec))
    assert result.state == "rolled-back"
    assert "health check exited 1" in result.detail
    assert inst.slots.current() == "a" and inst.slots.version() == "1.0.0"
    assert inst.slots.pending() is None
    assert ("firmware.rollback") in rec.types()


def test_the_first_install_rolls_back_to_no_firmware(tmp_path: Path) -> None:
    rec = Recorder()
    inst = _installer(tmp_path, rec, health="exit 7")
    bundle, manifest = _bundle(tmp_path, "1.0.0", OK_HOOK)
    result = asyncio.run(_install(inst, bundle, manifest, rec))
    assert result.state == "rolled-back" and "back to slot none" in result.detail
    assert inst.slots.current() is None


@pytest.mark.parametrize("healthy", [True, False])
def test_a_restart_asked_by_the_hook_is_checked_at_the_next_start(
    tmp_path: Path, healthy: bool
) -> None:
    rec = Recorder()
    inst = _installer(tmp_path, rec)
    old, m1 = _bundle(tmp_path, "1.0.0", OK_HOOK)
    asyncio.run(_install(inst, old, m1, rec))
    new, m2 = _bundle(tmp_path, "2.0.0", RESTART_HOOK)
    assert asyncio.run(_install(inst, new, m2, rec)) is None  # the caller restarts the agent
    assert rec.states[-1] == "restarting"
    pending = inst.slots.pending()
    assert pending is not None and (pending.new, pending.old, pending.restart) == ("b", "a", True)
    assert inst.slots.current() == "b"
    # A new process: nothing but the files on disk.
    after = Recorder()
    restarted = _installer(tmp_path, after, health="true" if healthy else "false")
    result = asyncio.run(restarted.confirm_pending(after.report))
    assert result is not None
    if healthy:
        assert result.state == "installed" and restarted.slots.current() == "b"
    else:
        assert result.state == "rolled-back" and restarted.slots.current() == "a"
        assert restarted.slots.version() == "1.0.0"
    assert restarted.slots.pending() is None
    assert asyncio.run(restarted.confirm_pending()) is None  # nothing left to do


def test_a_pending_install_past_its_deadline_is_rolled_back(tmp_path: Path) -> None:
    rec = Recorder()
    slots = Slots(tmp_path / "firmware")
    slots.switch("a", "1.0.0")
    slots.prepare("b")
    slots.set_pending(Pending("0" * 64, "r1", "2.0.0", "b", "a", deadline=100.0))
    slots.switch("b", "2.0.0")
    inst = _installer(tmp_path, rec, health="true", clock=lambda: 200.0)
    result = asyncio.run(inst.confirm_pending())
    assert result is not None and result.state == "rolled-back"
    assert "deadline" in result.detail and inst.slots.current() == "a"


def test_a_crash_between_pending_and_switch_rolls_back(tmp_path: Path) -> None:
    slots = Slots(tmp_path / "firmware")
    slots.switch("a", "1.0.0")
    slots.set_pending(Pending("0" * 64, "r1", "2.0.0", "b", "a", deadline=1e12))
    inst = _installer(tmp_path, Recorder(), health="true")
    result = asyncio.run(inst.confirm_pending())
    assert result is not None and result.state == "rolled-back"
    assert inst.slots.current() == "a"


def test_a_hung_health_check_times_out_and_rolls_back(tmp_path: Path) -> None:
    rec = Recorder()
    inst = _installer(tmp_path, rec, health="sleep 30")
    inst.config.health_timeout = 0.5
    bundle, manifest = _bundle(tmp_path, "1.0.0", OK_HOOK)
    result = asyncio.run(_install(inst, bundle, manifest, rec))
    assert result.state == "rolled-back" and "timed out" in result.detail


def test_staging_keeps_a_prefix_of_the_same_bundle_only(tmp_path: Path) -> None:
    staging = Staging(tmp_path / "incoming")
    sha = "a" * 64
    assert staging.resume_point(sha, 1000)[0] == 0
    staging.part.write_bytes(b"x" * 300)
    offset, hasher = staging.resume_point(sha, 1000)
    assert offset == 300 and hasher.hexdigest() == hashlib.sha256(b"x" * 300).hexdigest()
    assert staging.resume_point(sha, 200)[0] == 200  # never more than the bundle
    assert staging.resume_point("b" * 64, 1000)[0] == 0  # another bundle: start over
    assert not staging.part.exists()


def test_a_chatty_hook_output_is_read_with_bounded_memory(tmp_path: Path) -> None:
    # 40 MB of output: only a tail is kept (was read whole into memory).
    script = "head -c 40000000 /dev/zero | tr '\\0' x; echo; echo 'flash write failed'; exit 3"
    tracemalloc.start()
    try:
        code, out = asyncio.run(_run(["/bin/sh", "-c", script], tmp_path, {}, 60))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert code == 3 and out.endswith("flash write failed") and len(out) <= 160
    assert peak < 4 << 20, f"peak {peak >> 20} MiB"


def test_prepare_removes_what_a_hook_left_read_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    slots = Slots(tmp_path / "firmware")
    stuck = slots.path("a") / "etc" / "ro"
    stuck.mkdir(parents=True)
    (stuck / "config").write_text("x")
    stuck.chmod(0o555)
    # As root the mode alone does not stop an unlink: fail the first one as a user's would.
    real_unlink = os.unlink
    refused: list[Any] = []

    def unlink(path: Any, *args: Any, **kwargs: Any) -> None:
        if not refused and os.stat(stuck).st_mode & 0o200 == 0:
            refused.append(path)
            raise PermissionError(13, "Permission denied", str(path))
        real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", unlink)
    assert slots.prepare("a") == slots.path("a")
    assert refused and list(slots.path("a").iterdir()) == []


def test_a_slot_that_cannot_be_emptied_ends_the_install_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rec = Recorder()
    inst = _installer(tmp_path, rec)
    bundle, manifest = _bundle(tmp_path, "1.0.0", OK_HOOK)

    def prepare(slot: str) -> Path:
        raise PermissionError(13, "Permission denied", str(inst.slots.path(slot) / "ro"))

    monkeypatch.setattr(inst.slots, "prepare", prepare)
    result = asyncio.run(_install(inst, bundle, manifest, rec))
    assert result.state == "failed"
    assert result.detail.startswith("cannot empty slot a for the install: ")
    assert "Permission denied" in result.detail
    assert rec.types() == ["firmware.failed"]
    assert inst.slots.result(hashlib.sha256(bundle.read_bytes()).hexdigest()) == result
    assert inst.slots.current() is None
