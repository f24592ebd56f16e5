"""In-place upgrade: a data dir made by the hub of before hub/storage (the committed
v0 fixture, tests/fixtures/README.md) opens with the SQLite engine and keeps
everything its manifest lists; opening again changes nothing; a file written by a
newer hub is refused with one line.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import sqlite3
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hub.cakeys import to_authority
from hub.storage.api import Change, Conflict, Storage, TooNew
from hub.storage.sqlite import open_sqlite

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
ARCHIVE = FIXTURES / "hub_datadir_v0.tar.gz"
MANIFEST = json.loads((FIXTURES / "hub_datadir_v0.json").read_text())


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("v0")
    with tarfile.open(ARCHIVE) as tar:
        tar.extractall(root, filter="data")
    return root


@pytest.fixture
def root(pristine: Path, tmp_path: Path) -> Path:
    """A fresh copy of the unpacked fixture (data dir ``hub`` + the passphrase file)."""
    shutil.copytree(pristine, tmp_path / "v0", symlinks=True)
    return tmp_path / "v0"


def _passphrase(root: Path) -> bytes:
    return (root / MANIFEST["passphrase_file"]).read_bytes().strip()


@pytest.fixture
async def upgraded(root: Path) -> AsyncIterator[Storage]:
    storage = await open_sqlite(root / MANIFEST["data_dir"])
    try:
        yield storage
    finally:
        await storage.close()


async def test_audit_trail_is_kept(upgraded: Storage) -> None:
    expected = MANIFEST["audit"]
    assert await upgraded.audit.count() == expected["count"] == 38
    from hub.storage.api import AuditQuery

    events = await upgraded.audit.search(AuditQuery(limit=None))
    assert [(e.id, e.node, e.type, e.user) for e in events] == [
        (e["id"], e["node"], e["type"], e["user"]) for e in expected["events"]
    ]
    by_type: dict[str, int] = {}
    for e in events:
        by_type[e.type] = by_type.get(e.type, 0) + 1
    assert by_type == expected["by_type"]


async def test_rotation_state_acks_and_cas_are_kept(upgraded: Storage, root: Path) -> None:
    data = root / MANIFEST["data_dir"]
    pristine_states = json.loads((data / "ca" / "rotation.json.migrated").read_text())
    record = await upgraded.rotation.get()
    assert record.revision == 1 and record.states == pristine_states
    for kind in ("user", "host"):
        assert record.states[kind]["phase"] == MANIFEST["rotation"][kind]["phase"]
        assert record.states[kind]["mode"] == MANIFEST["rotation"][kind]["mode"]
    acks = json.loads((data / "rotation-nodes.json.migrated").read_text())
    assert await upgraded.rotation.acks() == acks and len(acks) == 2
    assert not (data / "ca" / "rotation.json").exists()
    assert not (data / "rotation-nodes.json").exists()
    # the CAs, decrypted with the fixture's passphrase: the same pins as before
    cas = {(c.kind, c.slot): c for c in await upgraded.authorities.all()}
    assert set(cas) == {("user", "current"), ("host", "current"), ("user", "next")}
    pins = {k: to_authority(c, "fixture", _passphrase(root)).pin() for k, c in cas.items()}
    assert pins["host", "current"] == MANIFEST["ca_pins"]["ca_pin"]
    assert sorted([pins["user", "current"], pins["user", "next"]]) == sorted(
        MANIFEST["ca_pins"]["trusted"]["user"]
    )
    assert pins["user", "next"] == MANIFEST["ca_pins"]["user_ca_pin"]  # update_clients: next signs
    with pytest.raises(Exception, match="wrong CA passphrase"):
        to_authority(cas["host", "current"], "fixture", b"not the passphrase")


async def test_firmware_trust_and_bundle_are_kept(upgraded: Storage, root: Path) -> None:
    want = MANIFEST["firmware_rollout"]
    rollouts = await upgraded.firmware.rollouts()
    assert [r.id for r in rollouts] == [want["id"]]
    got = rollouts[0]
    assert (got.state, got.sha256, got.size, got.version, dict(got.selector)) == (
        want["state"],
        want["sha256"],
        want["size"],
        want["version"],
        want["nodes_selector"],
    )
    assert got.bundle == want["sha256"]  # was the copy's path: now the blob's name
    nodes = await upgraded.firmware.nodes(got.id)
    assert [(n.node_id, n.state, n.progress, n.attempts) for n in nodes] == [
        (n["node_id"], n["state"], n["progress"], n["attempts"]) for n in want["nodes"]
    ]
    keys = await upgraded.trusted_keys.all()
    assert [(k.fingerprint, f"{k.public_key} {k.comment}") for k in keys] == [
        (k["key_id"], k["public_key"]) for k in MANIFEST["firmware_trusted_keys"]
    ]
    trust = root / MANIFEST["data_dir"] / "firmware" / "trusted.pub"
    assert not trust.exists() and trust.with_name("trusted.pub.migrated").exists()
    assert await upgraded.blobs.names() == [want["sha256"]]
    size = await upgraded.blobs.size(want["sha256"])
    assert size == want["size"]
    data = await upgraded.blobs.read(want["sha256"], 0, size)
    assert hashlib.sha256(data).hexdigest() == want["sha256"]
    assert await upgraded.settings.get("cluster") == MANIFEST["cluster_name"]


async def test_part_a_tables_are_untouched(upgraded: Storage, root: Path) -> None:
    """hub.db's own rows (users, roles, tokens, nodes, locks) are part A's to read through
    the api; here: the migrations around them changed none of them."""
    db = root / MANIFEST["data_dir"] / "hub.db"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] >= 3
        users = {r[0] for r in conn.execute("SELECT name FROM users")}
        nodes = {r[0] for r in conn.execute("SELECT name FROM nodes")}
        locks = {r[0] for r in conn.execute("SELECT id FROM locks")}
        tokens = conn.execute("SELECT count(*) FROM tokens").fetchone()[0]
        roles = {r[0] for r in conn.execute("SELECT name FROM roles")}
    assert users == {u["name"] for u in MANIFEST["users"]}
    assert nodes == {n["name"] for n in MANIFEST["nodes"]}
    assert locks == {lk["id"] for lk in MANIFEST["locks"]}
    assert tokens == MANIFEST["summary"]["tokens"]
    assert roles >= {r["name"] for r in MANIFEST["roles"]}


async def test_users_from_before_sso_read_back_as_local_users(upgraded: Storage) -> None:
    users = await upgraded.users.all()
    assert [u.name for u in users] == sorted(u["name"] for u in MANIFEST["users"])
    assert {(u.connector, len(u.traits), u.expires) for u in users} == {(None, 0, None)}
    assert await upgraded.connectors.all() == []
    assert await upgraded.sso.add("k", "v", 20.0, 10.0, cap=1) is True


def _snapshot(data: Path) -> dict[str, bytes]:
    """Every file but the SQLite ones (their pages move with any open) and run-time files."""
    return {
        str(p.relative_to(data)): p.read_bytes()
        for p in sorted(data.rglob("*"))
        if p.is_file() and ".db" not in p.name
    }


async def test_opening_twice_is_a_no_op(root: Path) -> None:
    data = root / MANIFEST["data_dir"]
    first = await open_sqlite(data)
    before = (await first.rotation.get(), await first.audit.count(), await first.rotation.acks())
    await first.close()
    files = _snapshot(data)
    again = await open_sqlite(data)
    try:
        after = (await again.rotation.get(), await again.audit.count(), await again.rotation.acks())
        assert after == before
        assert len(await again.trusted_keys.all()) == 1
    finally:
        await again.close()
    assert _snapshot(data) == files


@pytest.mark.parametrize("db", ["hub.db", "audit.db", "firmware/firmware.db"])
async def test_a_newer_database_is_refused_with_one_line(root: Path, db: str) -> None:
    data = root / MANIFEST["data_dir"]
    with sqlite3.connect(data / db) as conn:
        conn.execute("PRAGMA user_version = 999")
    with pytest.raises(TooNew) as err:
        await open_sqlite(data)
    line = str(err.value)
    assert "\n" not in line and "999" in line and db.split("/")[-1] in line
    assert "newer hub" in line
    # refused before anything moved: the old state files are still there
    assert (data / "ca" / "rotation.json").exists()
    assert (data / "firmware" / "trusted.pub").exists()


async def test_two_storages_never_both_advance_the_rotation(root: Path) -> None:
    """Two hubs (two Storage objects, two connections) on one data dir: one revision,
    two compare-and-sets, exactly one wins; the loser's feed hears of it."""
    data = root / MANIFEST["data_dir"]
    one = await open_sqlite(data)
    two = await open_sqlite(data)
    feed = two.changes()
    try:
        record = await one.rotation.get()
        assert record == await two.rotation.get()
        states = {k: {**v, "last": "raced"} for k, v in record.states.items()}

        async def advance(storage: Storage) -> object:
            try:
                return await storage.rotation.advance(record.revision, states)
            except Conflict as exc:
                return exc

        results = await asyncio.gather(*(advance(s) for s in (one, two, one, two)))
        assert sum(isinstance(r, Conflict) for r in results) == 3
        assert (await two.rotation.get()).revision == record.revision + 1

        async def rotation_change() -> Change:
            async for change in feed:
                if change.topic == "rotation":
                    return change
            raise AssertionError("feed closed")

        assert (await asyncio.wait_for(rotation_change(), 5.0)).topic == "rotation"
    finally:
        await feed.aclose()  # type: ignore[attr-defined]
        await one.close()
        await two.close()


def test_archive_is_the_committed_one() -> None:
    assert MANIFEST["format"] == "hub_datadir_v0"
    assert ARCHIVE.stat().st_size < 300 * 1024
