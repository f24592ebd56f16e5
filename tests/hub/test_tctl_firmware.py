"""``tctl firmware`` through a running hub: every refusal is one line that says what to do
next."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from helpers import Cluster, free_port

from firmware_tools.bundle import build_bundle
from firmware_tools.keys import load_signing_key, write_key_pair
from hub.storage.api import Rollout, Storage, blob_name
from hub.storage.sqlite import open_sqlite
from tctl.cli import main

T = TypeVar("T")


@pytest.fixture(scope="module")
def hub_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One running hub for the module: tctl reaches it through its data dir."""
    cluster = Cluster(tmp_path_factory.mktemp("fw"), free_port())
    cluster.start_hub()
    try:
        yield cluster.data
    finally:
        cluster.stop()


def _on_storage(data: Path, work: Callable[[Storage], Awaitable[T]]) -> T:
    """``work`` on a second Storage of the running hub's data dir (as another hub would)."""

    async def run() -> T:
        storage = await open_sqlite(data)
        try:
            return await work(storage)
        finally:
            await storage.close()

    return asyncio.run(run())


@pytest.fixture
def data(hub_dir: Path) -> Path:
    """The hub's data dir with no trusted firmware key (each test adds its own)."""

    async def untrust_all(storage: Storage) -> None:
        for key in await storage.trusted_keys.all():
            await storage.trusted_keys.remove(key.fingerprint)

    _on_storage(hub_dir, untrust_all)
    return hub_dir


def _bundle(tmp: Path, key: Path) -> Path:
    payload = tmp / "payload"
    payload.mkdir()
    (payload / "install.sh").write_text("#!/bin/sh\n")
    (payload / "install.sh").chmod(0o755)
    out = tmp / "fw.bundle"
    build_bundle(
        payload,
        out,
        name="gw-fw",
        version="1.0.0",
        targets={"board": "rpi4"},
        min_agent_version="0.1.0",
        install_hook="install.sh",
        key=load_signing_key(key),
    )
    return out


def _tctl(capsys: pytest.CaptureFixture[str], data: Path, *args: str) -> tuple[int, str, str]:
    code = main(["--data-dir", str(data), "firmware", *args])
    out, err = capsys.readouterr()
    return code, out, err


def _one_line(err: str, *needles: str) -> None:
    assert err.count("\n") == 1 and err.startswith("tctl: "), err
    for needle in needles:
        assert needle in err, err


def test_push_needs_a_trusted_key_and_a_good_bundle(
    tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "fw.key"
    write_key_pair(key)
    bundle = _bundle(tmp_path, key)
    code, _, err = _tctl(capsys, data, "push", str(bundle), "--nodes", "board=rpi4")
    assert code == 2
    _one_line(err, "tctl firmware trust")
    code, out, err = _tctl(capsys, data, "trust", f"{key}.pub")
    assert code == 0 and out.startswith("Trusted firmware key SHA256:")
    code, out, _ = _tctl(capsys, data, "trust", f"{key}.pub")
    assert "already trusted" in out
    # A flipped payload byte: refused, and nothing of it is kept.
    raw = bytearray(bundle.read_bytes())
    raw[-1] ^= 1
    tampered = tmp_path / "tampered.bundle"
    tampered.write_bytes(bytes(raw))
    code, _, err = _tctl(capsys, data, "push", str(tampered), "--nodes", "board=rpi4")
    assert code != 0
    _one_line(err, "bundle")

    async def blobs(storage: Storage) -> list[str]:
        return await storage.blobs.names()

    assert blob_name(bytes(raw)) not in _on_storage(data, blobs)
    # Signed by a key the hub does not trust.
    other = tmp_path / "other"
    other.mkdir()
    write_key_pair(other / "k")
    foreign = _bundle(other, other / "k")
    code, _, err = _tctl(capsys, data, "push", str(foreign), "--nodes", "board=rpi4")
    assert code != 0
    _one_line(err, "not a trusted firmware key")
    # A good bundle, but no node has the labels.
    code, _, err = _tctl(capsys, data, "push", str(bundle), "--nodes", "board=rpi4")
    assert code == 2
    _one_line(err, "no node has labels board=rpi4", "tctl nodes ls")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--canary", "0%"], "bad --canary"),
        (["--canary", "lots"], "bad --canary"),
        (["--rate", "fast"], "bad rate"),
        (["--max-parallel", "0"], "--max-parallel"),
        (["--nodes", "=x"], "bad label"),
    ],
)
def test_bad_push_options(
    tmp_path: Path,
    data: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    needle: str,
) -> None:
    argv = ["push", str(tmp_path / "missing.bundle"), "--nodes", "board=rpi4", *args]
    code, _, err = _tctl(capsys, data, *argv)
    assert code == 2
    _one_line(err, needle)


def test_trust_refuses_a_file_that_is_not_a_public_key(
    tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.pub"
    bad.write_text("not a key\n")
    code, _, err = _tctl(capsys, data, "trust", str(bad))
    assert code != 0
    _one_line(err, "ssh-ed25519")


def test_status_of_an_unknown_rollout(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _tctl(capsys, data, "status")
    assert code == 0 and "ID" in out
    code, _, err = _tctl(capsys, data, "status", "fw-nope")
    assert code == 2
    _one_line(err, "no roll-out 'fw-nope'", "tctl firmware status")


def test_stop_a_running_rollout(
    tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_key_pair(tmp_path / "fw.key")
    body = _bundle(tmp_path, tmp_path / "fw.key").read_bytes()
    name = blob_name(body)

    async def create(storage: Storage) -> None:
        # a real bundle in storage: the hub's orchestrator would stop a roll-out whose
        # bundle it cannot read before this test's tctl stop could
        async def chunks() -> AsyncIterator[bytes]:
            yield body

        await storage.blobs.put(name, chunks(), len(body))
        rollout = Rollout(
            "fw-1", 0.0, "gw-fw", "1.0.0", name, name, len(body), {}, None, 1, None, False,
            "running",
        )  # fmt: skip
        await storage.firmware.create(rollout, [("id-1", "dev-1", False)])

    _on_storage(data, create)
    code, out, _ = _tctl(capsys, data, "stop", "fw-1")
    assert code == 0 and "stopped" in out
    code, out, _ = _tctl(capsys, data, "status", "fw-1", "--format", "json")
    status = json.loads(out)
    # Its unfinished nodes show as stopped: nothing more happens to them.
    assert status["state"] == "stopped" and status["nodes"][0]["state"] == "stopped"
    code, out, _ = _tctl(capsys, data, "status", "fw-1")
    assert "Roll-out fw-1: gw-fw 1.0.0, stopped (stopped with tctl firmware stop)" in out
    row = next(line for line in out.splitlines() if line.startswith("dev-1"))
    assert row.split()[1] == "stopped" and "pending" not in out and "0%" not in row
    code, out, _ = _tctl(capsys, data, "status", "--format", "json")  # the list says the same
    assert json.loads(out)[0]["node_states"] == {"stopped": 1}
    code, _, err = _tctl(capsys, data, "stop", "fw-1")
    assert code == 2
    _one_line(err, "already stopped")
    code, _, err = _tctl(capsys, data, "stop", "fw-2")
    _one_line(err, "no roll-out 'fw-2'")


def test_trust_ls_and_untrust_round_trip(
    tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from firmware_tools.keys import key_id, load_public_key

    ids = {}
    for name in ("release", "hotfix"):
        (tmp_path / name).mkdir()
        write_key_pair(tmp_path / name / "k")
        ids[name] = key_id(load_public_key((tmp_path / name / "k.pub").read_text()))
        assert _tctl(capsys, data, "trust", str(tmp_path / name / "k.pub"))[0] == 0
    code, out, _ = _tctl(capsys, data, "trust", "ls")
    assert code == 0 and ids["release"] in out and ids["hotfix"] in out
    code, out, _ = _tctl(capsys, data, "trust", "ls", "--format", "json")
    assert [k["key_id"] for k in json.loads(out)] == [ids["release"], ids["hotfix"]]

    code, out, _ = _tctl(capsys, data, "untrust", ids["hotfix"])
    assert code == 0 and "no longer trusted" in out
    code, out, _ = _tctl(capsys, data, "trust", "ls", "--format", "json")
    assert [k["key_id"] for k in json.loads(out)] == [ids["release"]]
    # A bundle the untrusted key signed is refused, named as firmware-tools names it.
    bundle = _bundle(tmp_path / "hotfix", tmp_path / "hotfix" / "k")
    code, _, err = _tctl(capsys, data, "push", str(bundle), "--nodes", "board=rpi4")
    assert code == 11
    _one_line(err, "tctl: untrusted signer: ", ids["release"])
    # An unknown id: one line naming what is trusted.
    code, _, err = _tctl(capsys, data, "untrust", ids["hotfix"])
    assert code == 2
    _one_line(err, "is not trusted", ids["release"], "tctl firmware trust ls")
    # The last key gone: nothing is trusted, and push says how to add one.
    assert _tctl(capsys, data, "untrust", ids["release"])[0] == 0
    code, out, _ = _tctl(capsys, data, "trust", "ls")
    assert code == 0 and "No firmware signing key is trusted" in out
    code, _, err = _tctl(capsys, data, "push", str(bundle), "--nodes", "board=rpi4")
    assert code == 2
    _one_line(err, "tctl firmware trust")


def test_trust_keeps_each_keys_comment_and_untrust_only_that_key(
    tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from firmware_tools.keys import key_id, load_public_key

    pubs = []
    for name in ("release", "hotfix"):
        write_key_pair(tmp_path / name, comment=f"{name} key")
        pubs.append((tmp_path / f"{name}.pub").read_text().strip())
    both = tmp_path / "both.pub"
    both.write_text(f"# release key: do not remove (ops ticket 42)\n{pubs[0]}\n\n{pubs[1]}\n")
    assert _tctl(capsys, data, "trust", str(both))[0] == 0
    code, _, err = _tctl(capsys, data, "untrust", key_id(load_public_key(pubs[1])))
    assert code == 0, err
    code, out, _ = _tctl(capsys, data, "trust", "ls", "--format", "json")
    assert json.loads(out) == [{"key_id": key_id(load_public_key(pubs[0])), "public_key": pubs[0]}]
    assert pubs[0].endswith(" release key")


def test_push_refusals_carry_firmware_tools_refusal_names(
    tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from firmware_tools.cli import main as fwtools

    key = tmp_path / "fw.key"
    write_key_pair(key)
    assert _tctl(capsys, data, "trust", f"{key}.pub")[0] == 0
    raw = bytearray(_bundle(tmp_path, key).read_bytes())
    raw[-1] ^= 1
    tampered = tmp_path / "tampered.bundle"
    tampered.write_bytes(bytes(raw))
    code, _, err = _tctl(capsys, data, "push", str(tampered), "--nodes", "board=rpi4")
    assert fwtools(["bundle", "verify", str(tampered), "--key", f"{key}.pub"]) == code == 10
    fw_err = capsys.readouterr().err
    assert fw_err.startswith("firmware-tools: tampered bundle: "), fw_err
    _one_line(err, "tctl: tampered bundle: ")
    assert err.removeprefix("tctl: ") == fw_err.removeprefix("firmware-tools: ")


def test_canary_is_a_number_of_nodes_or_a_share(
    tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from hub.storage.api import Node

    async def add_nodes() -> None:
        storage = await open_sqlite(data)
        try:
            for i in range(20):
                node = Node(f"id-{i:02}", f"gw-{i:02}", {"board": "rpi4"}, version="0.1.0")
                await storage.nodes.add(node)
            await storage.nodes.add(Node("id-old", "gw-old", {"board": "rpi4"}, version="0.0.1"))
        finally:
            await storage.close()
        # open_sqlite made the audit trail beside the nodes (an enrolled fleet has one:
        # a lost trail is refused, hub/storage/sqlite/part_b.py refuse_lost_trail)
        assert (data / "audit.db").stat().st_size > 0

    asyncio.run(add_nodes())
    key = tmp_path / "fw.key"
    write_key_pair(key)
    assert _tctl(capsys, data, "trust", f"{key}.pub")[0] == 0
    bundle = _bundle(tmp_path, key)
    for canary, count in (("3", 3), ("10%", 2), ("1%", 1), ("25", 20)):
        code, out, err = _tctl(
            capsys, data, "push", str(bundle), "--nodes", "board=rpi4", "--canary", canary,
            "--canary-timeout", "30s", "--format", "json",
        )  # fmt: skip
        assert code == 0, err
        assert len(json.loads(out)["canaries"]) == count, canary
        (skipped,) = json.loads(out)["skipped"]  # named as firmware-tools names it
        assert skipped["node"] == "gw-old" and skipped["reason"].startswith("agent too old: ")
    code, out, _ = _tctl(capsys, data, "status", json.loads(out)["id"], "--format", "json")
    assert json.loads(out)["canary_timeout"] == 30
    for bad in ("1.5", "0", "0%", "x"):
        code, _, err = _tctl(capsys, data, "push", str(bundle), "--nodes", "b=1", "--canary", bad)
        assert code == 2
        _one_line(err, "bad --canary", "number of nodes", "5%")
    for bad in ("0", "10x", "soon"):  # the error names the option, not just "duration"
        code, _, err = _tctl(
            capsys, data, "push", str(bundle), "--nodes", "b=1", "--canary-timeout", bad
        )
        assert code == 2
        _one_line(err, f"bad --canary-timeout {bad!r}", "10m")
