"""The committed v0 hub data dir fixture (tests/fixtures/README.md) stays intact: the
archive unpacks into a temporary directory with the files the in-place upgrade test
reads, and its manifest parses and matches the archive."""

from __future__ import annotations

import json
import sqlite3
import tarfile
from pathlib import Path
from typing import Any

import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
ARCHIVE = FIXTURES / "hub_datadir_v0.tar.gz"
MANIFEST = FIXTURES / "hub_datadir_v0.json"


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(MANIFEST.read_text())
    return data


@pytest.fixture(scope="module")
def unpacked(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fixture")
    with tarfile.open(ARCHIVE) as tar:
        tar.extractall(root, filter="data")
    return root


def test_archive_holds_the_data_dir(unpacked: Path, manifest: dict[str, Any]) -> None:
    hub = unpacked / manifest["data_dir"]
    for name in ("hub.db", "audit.db", "firmware/firmware.db", "ca/rotation.json"):
        assert (hub / name).is_file(), name
    assert (hub / "ca").is_dir() and (hub / "ca" / "next").is_dir()
    assert (hub / "firmware" / "bundles").is_dir()
    assert (unpacked / manifest["passphrase_file"]).is_file()
    key = (hub / "ca" / "user_ca.key").read_text()
    assert key.startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")  # the passphrase is used
    packed = sorted(str(p.relative_to(unpacked)) for p in hub.rglob("*") if p.is_file())
    assert packed == manifest["files"]
    for db in ("hub.db", "audit.db", "firmware/firmware.db"):
        with sqlite3.connect(f"file:{hub / db}?mode=ro", uri=True) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",), db
    assert ARCHIVE.stat().st_size < 300 * 1024


def test_manifest_describes_the_fixture(manifest: dict[str, Any]) -> None:
    assert manifest["format"] == "hub_datadir_v0" and manifest["cluster_name"] == "fixture"
    assert len(manifest["commit"]) == 40
    assert {u["name"] for u in manifest["users"]} >= {"alice", "bob", "carol"}
    assert len(manifest["nodes"]) == 2 and manifest["locks"]
    assert manifest["audit"]["count"] == len(manifest["audit"]["events"]) > 0
    assert manifest["rotation"]["user"]["phase"] == "update_clients"
    assert manifest["firmware_rollouts"] and manifest["firmware_trusted_keys"]
