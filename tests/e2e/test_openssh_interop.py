"""Real OpenSSH ``ssh``, ``scp`` and ``sftp`` through the hub, with ``tsh config``.

One hub and one agent for the module (each test uses its own files); host keys
are checked strictly against the host CA that ``tsh config`` writes. The agent
runs where no ``sftp-server`` exists (tests/nosftp.py): ``scp`` and ``sftp``
reach its built-in SFTP server.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import PASSWORD, Cluster, current_totp, free_port, wait_for
from nosftp import WITHOUT_SFTP_SERVER, OsUser, assert_no_sftp_server, os_user
from require import require_binaries

ME = pwd.getpwuid(os.geteuid()).pw_name
NODE = "truck-042"


@pytest.fixture(scope="module", autouse=True)
def _tools() -> None:
    """What this module runs: present, or every test fails with a one-line hint."""
    require_binaries("ssh", "scp", "sftp")


class OpenSSH:
    def __init__(self, cluster: Cluster, home: Path, user: str) -> None:
        self.cluster = cluster
        self.env = cluster.env(TSH_HOME=str(home))
        login = cluster.tsh(
            "login",
            "--proxy",
            cluster.addr,
            "--user",
            user,
            "--ca-pin",
            cluster.ca_pin(),
            "--otp",
            current_totp(),
            input=PASSWORD + "\n",
            env=self.env,
        )
        assert login.returncode == 0, login.stderr
        out = cluster.tsh("config", env=self.env)
        assert out.returncode == 0, out.stderr
        self.config = home / "ssh_config"
        self.config.write_text(out.stdout)
        cluster_name = json.loads(cluster.tsh("status", "--format", "json", env=self.env).stdout)
        self.host = f"{NODE}.{cluster_name['cluster']}"

    def run(self, *argv: str, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        tool, *rest = argv
        return subprocess.run(
            [tool, "-F", str(self.config), "-o", "BatchMode=yes", *rest],
            input=input if input is not None else b"",
            capture_output=True,
            env=self.env,
            timeout=60,
        )


@pytest.fixture(scope="module")
def other() -> Iterator[OsUser]:
    """A second OS account: the agent runs as root and must drop to it."""
    with os_user("rmtssh") as user:
        yield user


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory, other: OsUser
) -> Iterator[tuple[Cluster, Path]]:
    root = tmp_path_factory.mktemp("openssh")
    cluster = Cluster(root, free_port())
    cluster.start_hub()
    try:
        role = root / "no-files.toml"
        role.write_text(
            'kind = "role"\nname = "no-files"\n[allow]\nlogins = ["{{internal.logins}}"]\n'
            'node_labels = { "*" = "*" }\n[permissions]\nfile_transfer = false\n'
        )
        cluster.tctl("create", "-f", str(role))
        cluster.add_user("alice", [ME, other.name])
        cluster.add_user("bob", [ME], roles="no-files")
        agent = cluster.start_agent(NODE, "env=lab", wrapper=WITHOUT_SFTP_SERVER)
        wait_for(lambda: cluster.node_online(NODE), what="node online")
        assert_no_sftp_server(agent.pid)
        yield cluster, root
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def alice(fleet: tuple[Cluster, Path]) -> OpenSSH:
    cluster, root = fleet
    return OpenSSH(cluster, root / "tsh-alice", "alice")


def test_config_block(alice: OpenSSH) -> None:
    text = alice.config.read_text()
    assert "Host *." in text and "proxy ssh %r@%h:%p" in text
    assert "StrictHostKeyChecking yes" in text
    assert "ssh-ed25519-cert-v01@openssh.com" in text
    known = next(line for line in text.splitlines() if "UserKnownHostsFile" in line)
    path = Path(known.split(None, 1)[1].strip('"'))
    assert path.read_text().startswith("@cert-authority *.")


def test_ssh_exit_codes_and_stdin(alice: OpenSSH) -> None:
    run = alice.run("ssh", f"{ME}@{alice.host}", "echo hi; exit 3")
    assert (run.stdout, run.returncode) == (b"hi\n", 3), run.stderr
    data = os.urandom(300_000)
    run = alice.run("ssh", f"{ME}@{alice.host}", "cat", input=data)
    assert run.returncode == 0 and run.stdout == data, run.stderr


def test_ssh_unknown_node_fails_cleanly(alice: OpenSSH) -> None:
    run = alice.run("ssh", f"{ME}@nosuch.{alice.host.split('.', 1)[1]}", "true")
    assert run.returncode == 255
    assert b"tsh: " in run.stderr


def test_scp_both_ways_and_recursive(alice: OpenSSH, tmp_path: Path) -> None:
    src = tmp_path / "up.bin"
    src.write_bytes(os.urandom(100_000))
    remote = tmp_path / "remote"  # the agent runs as us on this host: same filesystem
    remote.mkdir()
    run = alice.run("scp", str(src), f"{ME}@{alice.host}:{remote}/up.bin")
    assert run.returncode == 0, run.stderr
    assert (remote / "up.bin").read_bytes() == src.read_bytes()
    back = tmp_path / "back.bin"
    run = alice.run("scp", f"{ME}@{alice.host}:{remote}/up.bin", str(back))
    assert run.returncode == 0, run.stderr
    assert back.read_bytes() == src.read_bytes()

    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.txt").write_text("a")
    (tree / "sub" / "b.txt").write_text("b")
    run = alice.run("scp", "-r", str(tree), f"{ME}@{alice.host}:{remote}/")
    assert run.returncode == 0, run.stderr
    assert (remote / "tree" / "sub" / "b.txt").read_text() == "b"
    got = tmp_path / "got"
    run = alice.run("scp", "-r", f"{ME}@{alice.host}:{remote}/tree", str(got))
    assert run.returncode == 0, run.stderr
    assert (got / "a.txt").read_text() == "a" and (got / "sub" / "b.txt").read_text() == "b"

    run = alice.run("scp", f"{ME}@{alice.host}:{remote}/missing", str(back))
    assert run.returncode != 0

    # legacy protocol (scp -t / -f run as a command on the device)
    run = alice.run("scp", "-O", str(src), f"{ME}@{alice.host}:{remote}/legacy.bin")
    assert run.returncode == 0, run.stderr
    assert (remote / "legacy.bin").read_bytes() == src.read_bytes()


def test_sftp_put_get_and_large_file(alice: OpenSSH, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    with big.open("wb") as f:
        for _ in range(50):
            f.write(os.urandom(1 << 20))
    remote = tmp_path / "remote"
    remote.mkdir()
    batch = tmp_path / "batch"
    batch.write_text(f"put {big} {remote}/big.bin\nget {remote}/big.bin {tmp_path}/big.back\n")
    run = alice.run("sftp", "-b", str(batch), f"{ME}@{alice.host}")
    assert run.returncode == 0, run.stderr
    want = hashlib.sha256(big.read_bytes()).hexdigest()
    assert hashlib.sha256((remote / "big.bin").read_bytes()).hexdigest() == want
    assert hashlib.sha256((tmp_path / "big.back").read_bytes()).hexdigest() == want

    batch.write_text(f"get {remote}/nope {tmp_path}/nope\n")
    run = alice.run("sftp", "-b", str(batch), f"{ME}@{alice.host}")
    assert run.returncode != 0


def test_file_transfer_audited_per_file(
    fleet: tuple[Cluster, Path], alice: OpenSSH, tmp_path: Path
) -> None:
    cluster, _ = fleet
    src = tmp_path / "audited.txt"
    src.write_text("x" * 1234)
    run = alice.run("scp", str(src), f"{ME}@{alice.host}:{tmp_path}/audited.copy")
    assert run.returncode == 0, run.stderr

    def found() -> list[dict[str, Any]]:
        events = cluster.tctl_json("audit", "search", "--type", "file.transfer")
        return [e for e in events if e["fields"]["path"].endswith("audited.copy")]

    (event,) = wait_for(found, what="file.transfer event")
    assert event["fields"] == {
        "path": f"{tmp_path}/audited.copy",
        "size": 1234,
        "direction": "upload",
    }
    assert event["user"] == "alice" and event["login"] == ME


def test_file_transfer_refused_without_permission(
    fleet: tuple[Cluster, Path], tmp_path: Path
) -> None:
    cluster, root = fleet
    bob = OpenSSH(cluster, root / "tsh-bob", "bob")
    run = bob.run("ssh", f"{ME}@{bob.host}", "echo shell ok")
    assert (run.stdout, run.returncode) == (b"shell ok\n", 0), run.stderr
    src = tmp_path / "f.txt"
    src.write_text("f")
    run = bob.run("scp", str(src), f"{ME}@{bob.host}:{tmp_path}/g.txt")
    assert run.returncode != 0
    assert b"file transfer is not permitted by your roles" in run.stderr
    run = bob.run("scp", "-O", str(src), f"{ME}@{bob.host}:{tmp_path}/g.txt")
    assert run.returncode != 0
    assert b"file transfer is not permitted by your roles" in run.stderr
    assert not (tmp_path / "g.txt").exists()


#: One tree with the modes that matter: group-readable, private, executable, read-only,
#: private, read-only and world-writable directories, a symbolic link. Times: a day in 2020.
TREE_FILES = {
    "group.txt": 0o640,
    "run.sh": 0o755,
    "ro.txt": 0o444,
    "private/key": 0o600,
    "shared/doc": 0o644,
}
OLD = 1_600_000_000


def _make_tree(at: Path) -> Path:
    tree = at / "tree"
    (tree / "private").mkdir(parents=True)
    (tree / "shared").mkdir()
    for rel, mode in TREE_FILES.items():
        (tree / rel).write_text(rel)
        (tree / rel).chmod(mode)
        os.utime(tree / rel, (OLD, OLD))
    (tree / "private").chmod(0o700)
    (tree / "shared").chmod(0o555)  # read-only: the copy must be filled before its chmod
    (tree / "world").mkdir(mode=0o777)
    (tree / "world").chmod(0o777)  # an upload's directory gets it with no umask
    (tree / "link.txt").symlink_to("group.txt")
    return tree


def _listing(tree: Path) -> dict[str, tuple[str, int, bool]]:
    """rel path -> (kind, permission bits, mtime kept), links apart."""
    out = {}
    for path in sorted(tree.rglob("*")):
        st = path.lstat()
        kind = "link" if path.is_symlink() else "dir" if path.is_dir() else "file"
        out[str(path.relative_to(tree))] = (kind, st.st_mode & 0o7777, int(st.st_mtime) == OLD)
    return out


def test_tsh_scp_r_keeps_modes_as_openssh_scp_and_links_as_links(
    fleet: tuple[Cluster, Path], alice: OpenSSH, tmp_path: Path
) -> None:
    """The same tree both ways with OpenSSH's scp and with tsh scp: the same modes
    (0640 stays 0640 without -p; -p adds the times). Where OpenSSH's scp copies what
    a symbolic link points to, tsh scp keeps the link."""
    cluster, _ = fleet
    tree = _make_tree(tmp_path / "src")
    remote = tmp_path / "remote"
    (remote / "ossh").mkdir(parents=True)
    (remote / "tsh").mkdir()

    def tsh_scp(*args: str) -> None:
        run = cluster.tsh("scp", *args, env=alice.env)
        assert (run.returncode, run.stderr) == (0, ""), run.stderr

    def ossh_scp(*args: str) -> None:
        run = alice.run("scp", *args)
        assert run.returncode == 0, run.stderr

    ossh_scp("-r", str(tree), f"{ME}@{alice.host}:{remote}/ossh/")
    tsh_scp("-r", str(tree), f"{ME}@{NODE}:{remote}/tsh/")
    ossh, tsh = _listing(remote / "ossh" / "tree"), _listing(remote / "tsh" / "tree")
    assert tsh.pop("link.txt")[0] == "link" and ossh.pop("link.txt")[:2] == ("file", 0o640)
    assert os.readlink(remote / "tsh" / "tree" / "link.txt") == "group.txt"
    assert tsh == ossh
    assert tsh["group.txt"] == ("file", 0o640, False)  # not 0644; no times without -p
    assert tsh["private"] == ("dir", 0o700, False) and tsh["ro.txt"][1] == 0o444
    assert tsh["shared"] == ("dir", 0o555, False)  # u+wx while filled, then its own bits
    assert tsh["world"] == ("dir", 0o777, False)

    down = tmp_path / "down"
    for side in ("ossh", "tsh"):  # a file already there keeps its mode, with both
        (down / side / "tree").mkdir(parents=True)
        (down / side / "tree" / "group.txt").write_text("old")
        (down / side / "tree" / "group.txt").chmod(0o600)
    ossh_scp("-r", f"{ME}@{alice.host}:{tree}", str(down / "ossh"))
    tsh_scp("-r", f"{ME}@{NODE}:{tree}", str(down / "tsh"))
    ossh, tsh = _listing(down / "ossh" / "tree"), _listing(down / "tsh" / "tree")
    assert tsh.pop("link.txt")[0] == "link" and ossh.pop("link.txt")[0] == "file"
    assert tsh == ossh
    assert tsh["ro.txt"] == ("file", 0o644, False)  # a download keeps the owner's write bit
    assert tsh["group.txt"] == ("file", 0o600, False)
    assert (down / "tsh" / "tree" / "group.txt").read_text() == "group.txt"

    (remote / "ossh-p").mkdir()
    (remote / "tsh-p").mkdir()
    ossh_scp("-r", "-p", str(tree), f"{ME}@{alice.host}:{remote}/ossh-p/")
    tsh_scp("-r", "-p", str(tree), f"{ME}@{NODE}:{remote}/tsh-p/")
    ossh, tsh = _listing(remote / "ossh-p" / "tree"), _listing(remote / "tsh-p" / "tree")
    del ossh["link.txt"], tsh["link.txt"]
    assert tsh == ossh
    assert tsh["group.txt"] == ("file", 0o640, True)


def test_sftp_and_scp_as_another_login_run_as_that_account(
    alice: OpenSSH, other: OsUser, tmp_path: Path
) -> None:
    """The agent runs as root with no sftp-server: OpenSSH's sftp and scp reach the
    built-in server running as the login, and the kernel refuses what it may not do."""
    assert os.geteuid() == 0, "run as root: the agent must switch to another login"
    at = f"{other.name}@{alice.host}"
    src = tmp_path / "hello.txt"
    src.write_text("hello")
    tmp_path.chmod(0o700)  # root's
    secret = other.home / "root-only.txt"
    secret.write_text("root only")
    secret.chmod(0o600)
    batch = tmp_path / "batch"
    batch.write_text(f"put {src} via-sftp.txt\n")
    run = alice.run("sftp", "-b", str(batch), at)
    assert run.returncode == 0, run.stderr
    run = alice.run("scp", str(src), f"{at}:via-scp.txt")
    assert run.returncode == 0, run.stderr
    for name in ("via-sftp.txt", "via-scp.txt"):
        st = (other.home / name).stat()
        assert (st.st_uid, st.st_gid, (other.home / name).read_text()) == (
            other.uid, other.gid, "hello",
        )  # fmt: skip

    run = alice.run("scp", str(src), f"{at}:{tmp_path}/planted.txt")
    assert run.returncode != 0 and b"Permission denied" in run.stderr, run.stderr
    assert not (tmp_path / "planted.txt").exists()
    batch.write_text(f"get root-only.txt {tmp_path}/stolen.txt\n")
    run = alice.run("sftp", "-b", str(batch), at)
    assert run.returncode != 0 and b"Permission denied" in run.stderr, run.stderr
    assert not (tmp_path / "stolen.txt").exists()
