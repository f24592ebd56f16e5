"""tctl as a client of the hub: the hub's admin identity, ``--hub``/``-i`` from another
machine, the ``admin`` permission, the caller named in the audit trail, no database
opened by tctl, and one line when the hub is down.

tctl runs in this process (``tctl.cli.main``) where no separate process is needed: a
hub per module, and an interpreter start per tctl call would cost most of the time."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import Cluster, free_port, wait_for

from remoteler.errors import ConfigError
from remoteler.identity import identity_paths, read_identity_file
from tctl import cli as tctl


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("admin"), free_port())
    c.start_hub()
    try:
        c.add_user("ed", [], roles="editor")
        c.add_user("ann", ["pi"], roles="access")
        yield c
    finally:
        c.stop()


Run = tuple[int, str, str]


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Any:
    """``run(*argv)`` -> (exit code, stdout, stderr) of tctl in this process."""

    def call(*argv: str) -> Run:
        code = tctl.main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return call


def _local(run: Any, cluster: Cluster, *argv: str) -> Any:
    code, out, err = run("--data-dir", str(cluster.data), *argv, "--format", "json")
    assert code == 0, err
    return json.loads(out)


def _remote(run: Any, cluster: Cluster, ident: Path, *argv: str) -> Run:
    """tctl as on another machine: no data dir, only the hub's address and an identity."""
    result: Run = run(
        "--data-dir", str(cluster.root / "no-such-dir"), "--hub", cluster.addr, "-i", str(ident),
        *argv,
    )  # fmt: skip
    return result


def _sign(run: Any, cluster: Cluster, user: str) -> Path:
    out = cluster.root / f"{user}-id"
    code, _, err = run(
        "--data-dir", str(cluster.data), "auth", "sign", "--user", user, "-o", str(out)
    )
    assert code == 0, err
    return out


def _events(run: Any, cluster: Cluster, type: str) -> list[dict[str, Any]]:
    return list(_local(run, cluster, "audit", "search", "--type", type))


def test_admin_identity_is_0600_and_follows_a_rotation(run: Any, cluster: Cluster) -> None:
    path = cluster.data / "admin-identity"
    for p in identity_paths(path):
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    before = read_identity_file(path)
    assert before.user == "@admin"
    rotate = ("auth", "rotate", "--type", "user", "--manual", "--phase")
    assert _local(run, cluster, *rotate, "init")["phase"] == "init"

    def renewed() -> bool:
        try:
            return read_identity_file(path).ssh_cert != before.ssh_cert
        except ConfigError:  # caught between two of its four files' renames
            return False

    # A new phase: the hub writes a new identity (checked every 2 s); tctl goes on working.
    wait_for(renewed, timeout=15, what="admin identity renewed after the phase change")
    assert _local(run, cluster, *rotate, "rollback")["phase"] == "rollback"
    assert _local(run, cluster, *rotate, "standby")["phase"] == "standby"


def test_editor_from_another_machine_is_audited_by_name(run: Any, cluster: Cluster) -> None:
    ident = _sign(run, cluster, "ed")
    code, out, err = _remote(run, cluster, ident, "users", "add", "zoe", "--format", "json")
    assert code == 0, err
    assert json.loads(out)["user"] == "zoe"
    code, out, err = _remote(run, cluster, ident, "lock", "--login", "root", "--format", "json")
    assert code == 0, err
    lock_id = json.loads(out)["id"]
    assert _remote(run, cluster, ident, "unlock", lock_id)[0] == 0

    changes = _events(run, cluster, "admin.change")
    (added,) = [e for e in changes if e["fields"]["target"] == "zoe"]
    assert added["fields"]["action"] == "user.add"
    assert added["fields"]["by"] == "tctl:ed" and added["fields"]["addr"] == "127.0.0.1"
    (made,) = [
        e for e in _events(run, cluster, "lock.created") if e["fields"]["lock_id"] == lock_id
    ]
    assert made["fields"]["by"] == "tctl:ed"
    (gone,) = [
        e for e in _events(run, cluster, "lock.deleted") if e["fields"]["lock_id"] == lock_id
    ]
    assert gone["fields"]["by"] == "tctl:ed"
    # on the hub host: the hub's own identity, and the OS user tctl said it ran as
    (own,) = [e for e in changes if e["fields"]["target"] == "ann"]
    assert own["fields"]["by"] == "tctl:@admin" and own["fields"]["os_user"]


def test_a_user_without_admin_is_refused_in_one_line(run: Any, cluster: Cluster) -> None:
    ident = _sign(run, cluster, "ann")
    before = _local(run, cluster, "users", "ls")
    for argv in (["users", "ls"], ["users", "rm", "ed"], ["status"]):
        code, out, err = _remote(run, cluster, ident, *argv)
        assert code != 0 and out == ""
        assert err.count("\n") == 1 and err.startswith("tctl: "), err
        assert "lacks the 'admin' permission" in err and "editor" in err
    assert _local(run, cluster, "users", "ls") == before
    code, _, err = run("--hub", cluster.addr, "status")  # --hub without -i: what to give
    assert code == 2 and err.count("\n") == 1 and "-i FILE" in err


# tctl in a fresh interpreter with an audit hook that records every file opened and
# every sqlite3 connection: tctl must open neither a database nor a CA key.
PROBE = """
import json, sys
opened = []
watched = ("open", "sqlite3.connect")
sys.addaudithook(lambda e, a: opened.append(str(a[0])) if e in watched else None)
from tctl.cli import main
codes = [main(["--data-dir", sys.argv[1], *argv]) for argv in json.loads(sys.argv[2])]
hub_modules = sorted(m for m in sys.modules if m == "hub" or m.startswith("hub."))
print(json.dumps({"codes": codes, "opened": opened, "hub_modules": hub_modules,
                  "sqlite3": "sqlite3" in sys.modules}), file=sys.stderr)
"""


def test_tctl_opens_no_database_and_no_ca_key(cluster: Cluster) -> None:
    commands = [
        ["status"],
        ["users", "ls"],
        ["nodes", "ls"],
        ["tokens", "add"],
        ["audit", "search", "--limit", "5"],
        ["auth", "export", "--type", "host"],
        ["firmware", "status"],
    ]
    run = subprocess.run(
        [sys.executable, "-c", PROBE, str(cluster.data), json.dumps(commands)],
        capture_output=True,
        text=True,
        env=cluster.env(),
        timeout=60,
    )
    report = json.loads(run.stderr.strip().splitlines()[-1])
    assert report["codes"] == [0] * len(commands), run.stderr
    data = str(cluster.data)
    mine = {p for p in report["opened"] if p.startswith(data)}
    allowed = {
        f"{data}/hub.addr",
        *(str(p) for p in identity_paths(cluster.data / "admin-identity")),
    }
    assert mine <= allowed, mine - allowed  # no hub.db, audit.db, CA key, TLS key
    assert report["hub_modules"] == [] and not report["sqlite3"]


def test_hub_down_is_one_line_naming_the_start_command(run: Any, tmp_path: Path) -> None:
    c = Cluster(tmp_path, free_port())
    c.start_hub()
    try:
        assert _local(run, c, "status")["hub"] == c.addr
    finally:
        c.kill_hub()  # SIGKILL: hub.addr stays behind, nothing listens
    assert (c.data / "hub.addr").exists()
    code, _, err = run("--data-dir", str(c.data), "users", "ls")
    assert code != 0 and err.count("\n") == 1, err
    assert f"start it with 'hub start --data-dir {c.data}'" in err
    (c.data / "hub.addr").unlink()  # as a clean stop leaves it
    code, _, err = run("--data-dir", str(c.data), "status")
    assert err == f"tctl: the hub is not running: start it with 'hub start --data-dir {c.data}'\n"
