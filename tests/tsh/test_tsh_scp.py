"""``tsh scp`` through a real hub to a real agent (whose built-in SFTP server writes our
filesystem). The agents run where no ``sftp-server`` exists (tests/nosftp.py).

One hub and one agent for the module; each test copies into its own tmp_path.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import pwd
import re
import select
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import BIN, Cluster, free_port, stop_process, wait_for
from nosftp import WITHOUT_SFTP_SERVER, OsUser, assert_no_sftp_server, os_user

from remoteler.errors import UsageError
from tsh.scp import (
    REFUSAL_MAX,
    Copier,
    Location,
    Plan,
    Refused,
    describe,
    make_plan,
    parse_location,
    start_sftp,
)

ME = pwd.getpwuid(os.geteuid()).pw_name
NODE = "scp-node"
#: A node configured with OpenSSH's sftp-server (--sftp-server PATH).
OPENSSH_NODE = "openssh-node"
OPENSSH_SFTP_SERVER = "/usr/lib/openssh/sftp-server"

# --- argument parsing (no network) -------------------------------------------------------


@pytest.mark.parametrize(
    ("arg", "want"),
    [
        ("pi@truck:/tmp/x", Location("/tmp/x", "pi", "truck")),
        ("pi@truck:", Location(".", "pi", "truck")),
        ("pi@truck:~/logs", Location("logs", "pi", "truck")),
        ("a@b@truck:f", Location("f", "a@b", "truck")),
        ("./a:b", Location("./a:b")),
        ("/tmp/a:b", Location("/tmp/a:b")),
        ("plain.txt", Location("plain.txt")),
    ],
)
def test_parse_location(arg: str, want: Location) -> None:
    assert parse_location(arg) == want


def test_plan_directions() -> None:
    assert make_plan(["a", "b", "pi@n:d"]) == Plan(True, "pi", "n", ("a", "b"), "d")
    assert make_plan(["pi@n:a", "pi@n:b", "."]) == Plan(False, "pi", "n", ("a", "b"), ".")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["only"], "source and a destination"),
        (["pi@a:x", "pi@b:y"], "node to a node"),
        (["a", "b"], "one side must be on a node"),
        (["pi@a:x", "y", "z"], "one side must be on a node"),
        (["pi@a:x", "pi@b:y", "z"], "one login@node"),
        (["truck:x", "y"], "give the login"),
    ],
)
def test_plan_refusals(args: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        make_plan(args)


# --- node-controlled text (no network) ------------------------------------------------------

EVIL = "\x1b]52;c;ZXZpbA==\x07\x1b[2J\u202e"  # OSC 52 clipboard write, clear screen, RLO
SHOWN = "?]52;c;ZXZpbA==??[2J?"


def test_failure_lines_show_node_text_as_printable_only() -> None:
    import asyncssh

    copier = Copier(None, Plan(False, "pi", "n", ("/d",), "/tmp/x"), True, False)
    exc = asyncssh.SFTPFailure(f"disk {EVIL} full")
    exc.srcpath = f"/d/{EVIL}name".encode()  # type: ignore[attr-defined]
    copier._on_error(exc)
    copier.fail("/tmp/x", describe(asyncssh.SFTPError(99, EVIL * 100)))
    for line in copier.failures:
        assert line.isprintable(), repr(line)
    assert copier.failures[0] == f"/d/{SHOWN}name: disk {SHOWN} full"
    assert len(copier.failures[1]) <= len("/tmp/x: ") + 200


class _Stderr:
    """A node's stderr that says why, then never ends (or streams without a newline)."""

    def __init__(self, first: bytes, endless: bytes = b"") -> None:
        self.chunks = [first]
        self.endless = endless
        self.asked: list[int] = []

    async def read(self, n: int = -1) -> bytes:
        self.asked.append(n)
        if self.chunks:
            return self.chunks.pop(0)[:n]
        if self.endless:
            return self.endless[:n]
        await asyncio.Event().wait()  # no EOF: the node keeps the channel open
        return b""


class _Writer:
    def write_eof(self) -> None:
        pass


class _Conn:
    def __init__(self, stderr: _Stderr) -> None:
        self.stderr = stderr

    async def start_sftp_client(self) -> None:
        import asyncssh

        raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, "refused")

    async def open_session(self, **_: object) -> tuple[_Writer, None, _Stderr]:
        return _Writer(), None, self.stderr


async def test_refusal_text_is_printable_and_read_bounded() -> None:
    stderr = _Stderr(f"remoteler: no {EVIL} for you\nmore\n".encode())
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(Refused) as refused:
        await start_sftp(_Conn(stderr))
    assert loop.time() - started < 1  # the first line is enough: no wait for EOF
    assert str(refused.value) == f"no {SHOWN} for you"
    assert all(0 < n <= REFUSAL_MAX for n in stderr.asked)

    flood = _Stderr(b"x" * 1000, endless=b"y" * 65536)  # never a newline, never EOF
    with pytest.raises(Refused) as refused:
        await start_sftp(_Conn(flood))
    assert len(str(refused.value)) <= 200 and str(refused.value).startswith("x" * 100)
    assert all(0 < n <= REFUSAL_MAX for n in flood.asked) and len(flood.asked) <= REFUSAL_MAX


# --- end to end ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def other() -> Iterator[OsUser]:
    """A second OS account: the agent runs as root and must drop to it."""
    with os_user("rmtscp") as user:
        yield user


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, other: OsUser) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("scp")
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
        cluster.start_agent(NODE, "env=lab", wrapper=WITHOUT_SFTP_SERVER)
        # killed by one test; keeps a broken session 2 s for tsh to resume (docs/resume.md)
        cluster.start_agent("doomed", "", None, "--resume-grace", "2", wrapper=WITHOUT_SFTP_SERVER)
        openssh = root / "sftp-server"  # OpenSSH's, configured; says when it starts
        assert os.access(OPENSSH_SFTP_SERVER, os.X_OK), (
            f"{OPENSSH_SFTP_SERVER} missing: apt-get install openssh-sftp-server"
        )
        openssh.write_text(
            f"#!/bin/sh\necho started >> {root}/openssh-used\nexec {OPENSSH_SFTP_SERVER}\n"
        )
        openssh.chmod(0o755)
        cluster.start_agent(OPENSSH_NODE, "", None, "--sftp-server", str(openssh))
        wait_for(lambda: cluster.node_online(NODE), what="node online")
        wait_for(lambda: cluster.node_online("doomed"), what="second node online")
        wait_for(lambda: cluster.node_online(OPENSSH_NODE), what="third node online")
        login = cluster.login("alice")
        assert login.returncode == 0, login.stderr
        yield cluster
    finally:
        cluster.stop()


def _scp(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return cluster.tsh("scp", *args)


def _at(path: Path | str) -> str:
    return f"{ME}@{NODE}:{path}"


def test_upload_download_and_several_sources(fleet: Cluster, tmp_path: Path) -> None:
    a, b = tmp_path / "a.txt", tmp_path / "b.bin"
    a.write_text("alpha\n")
    b.write_bytes(os.urandom(70_000))
    remote = tmp_path / "remote"
    remote.mkdir()
    run = _scp(fleet, str(a), _at(remote / "a.copy"))
    assert (run.returncode, run.stderr) == (0, "")
    assert (remote / "a.copy").read_text() == "alpha\n"

    def audited() -> list[dict[str, object]]:
        events = fleet.tctl_json("audit", "search", "--type", "file.transfer")
        return [e for e in events if e["fields"]["path"] == str(remote / "a.copy")]

    (event,) = wait_for(audited, what="file.transfer event")  # the agent's sftp audit
    assert event["fields"] == {"path": str(remote / "a.copy"), "size": 6, "direction": "upload"}
    assert (event["user"], event["login"]) == ("alice", ME)
    run = _scp(fleet, str(a), str(b), _at(remote))
    assert run.returncode == 0, run.stderr
    assert (remote / "b.bin").read_bytes() == b.read_bytes()
    holey = tmp_path / "holey.img"  # data, then a hole to the end (a disk image, say)
    with holey.open("wb") as f:
        f.write(b"boot")
        f.truncate(3 << 20)
    run = _scp(fleet, str(holey), _at(remote))
    assert run.returncode == 0, run.stderr
    assert (remote / "holey.img").read_bytes() == holey.read_bytes()

    back = tmp_path / "back"
    back.mkdir()
    run = _scp(fleet, _at(remote / "a.txt"), _at(remote / "b.bin"), str(back))
    assert run.returncode == 0, run.stderr
    assert (back / "b.bin").read_bytes() == b.read_bytes()
    assert (back / "a.txt").read_text() == "alpha\n"
    assert run.stderr == "", "no progress bar when stderr is not a terminal"


def test_recursive_tree_both_ways_and_preserve(fleet: Cluster, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "sub" / "deeper").mkdir(parents=True)
    (tree / "top.txt").write_text("top")
    (tree / "sub" / "deeper" / "leaf.txt").write_text("leaf")
    os.chmod(tree / "top.txt", 0o640)
    os.utime(tree / "top.txt", (1_700_000_000, 1_700_000_000))
    remote = tmp_path / "remote"
    remote.mkdir()

    run = _scp(fleet, str(tree), _at(remote))
    assert run.returncode == 1
    assert run.stderr == f"tsh: {tree}: is a directory (use -r to copy directories)\n"

    run = _scp(fleet, "-r", "-p", str(tree), _at(remote))
    assert run.returncode == 0, run.stderr
    assert (remote / "tree" / "sub" / "deeper" / "leaf.txt").read_text() == "leaf"
    st = (remote / "tree" / "top.txt").stat()
    assert (st.st_mode & 0o777, int(st.st_mtime)) == (0o640, 1_700_000_000)

    got = tmp_path / "got"  # does not exist: becomes the copy, as with scp -r
    run = _scp(fleet, "-r", _at(remote / "tree"), str(got))
    assert run.returncode == 0, run.stderr
    assert (got / "top.txt").read_text() == "top"
    assert (got / "sub" / "deeper" / "leaf.txt").read_text() == "leaf"


def test_failures_name_the_file_and_the_rest_still_copies(fleet: Cluster, tmp_path: Path) -> None:
    good = tmp_path / "good.txt"
    good.write_text("good")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    remote = tmp_path / "remote"
    remote.mkdir()

    run = _scp(fleet, str(tmp_path / "missing"), str(good), _at(remote))
    assert run.returncode == 1
    assert run.stderr == f"tsh: {tmp_path / 'missing'}: no such file or directory\n"
    assert (remote / "good.txt").read_text() == "good"

    run = _scp(fleet, _at(remote / "nope"), str(tmp_path / "x"))
    assert (run.returncode, run.stderr) == (
        1,
        f"tsh: {remote / 'nope'}: no such file or directory\n",
    )

    run = _scp(fleet, str(good), _at(remote / "no-dir" / "g.txt"))  # the node's side failed
    assert (run.returncode, run.stderr) == (
        1,
        f"tsh: {remote / 'no-dir' / 'g.txt'}: no such file or directory\n",
    )
    run = _scp(fleet, _at(remote / "good.txt"), str(tmp_path / "no-dir" / "g.txt"))  # ours
    assert (run.returncode, run.stderr) == (
        1,
        f"tsh: {tmp_path / 'no-dir' / 'g.txt'}: no such file or directory\n",
    )

    if os.geteuid() != 0:  # root writes anywhere
        run = _scp(fleet, str(good), _at(locked / "g.txt"))
        assert run.returncode == 1
        assert run.stderr == f"tsh: {locked / 'g.txt'}: permission denied\n", run.stderr

    run = _scp(fleet, str(good), str(good), _at(remote / "good.txt"))
    assert run.returncode == 1 and "not a directory" in run.stderr


def test_connection_errors_exit_255(fleet: Cluster, tmp_path: Path) -> None:
    run = _scp(fleet, str(tmp_path), f"{ME}@no-such-node:/tmp/")
    assert run.returncode == 255
    assert run.stderr.startswith("tsh: ") and len(run.stderr.splitlines()) == 1
    run = _scp(fleet, "pi@a:x", "pi@b:y")
    assert run.returncode == 2 and "node to a node" in run.stderr


def test_node_lost_mid_transfer_exits_255_with_one_line(fleet: Cluster, tmp_path: Path) -> None:
    big = tmp_path / "big"
    with big.open("wb") as f:
        f.truncate(1 << 30)  # a hole: copied as zeros, never all of it here
    up = tmp_path / "big.up"
    proc = subprocess.Popen(
        [str(BIN / "tsh"), "scp", str(big), f"{ME}@doomed:{up}"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=fleet.env(),
    )
    try:
        wait_for(lambda: up.exists() and up.stat().st_size > 0, what="transfer under way")
        stop_process(fleet.agents.pop("doomed"), signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
    finally:
        stop_process(proc)
    assert proc.returncode == 255, err
    # tsh tried to resume for the device's grace (2 s here, docs/resume.md): one status
    # line, then one line with the outcome
    status, outcome = err.splitlines()
    assert status == "tsh: link to doomed lost (the link closed), resuming…", err
    assert outcome.startswith("tsh: connection to 'doomed' lost (not back within the "), err
    assert "2 s resume grace; last error: node 'doomed' is offline" in outcome, err


def test_refused_without_file_transfer_permission(fleet: Cluster, tmp_path: Path) -> None:
    home = tmp_path / "bob-tsh"
    env = fleet.env(TSH_HOME=str(home))
    from helpers import PASSWORD, current_totp

    login = fleet.tsh(
        "login", "--proxy", fleet.addr, "--user", "bob", "--ca-pin", fleet.ca_pin(),
        "--otp", current_totp(), input=PASSWORD + "\n", env=env,
    )  # fmt: skip
    assert login.returncode == 0, login.stderr
    src = tmp_path / "f.txt"
    src.write_text("f")
    run = fleet.tsh("scp", str(src), _at(tmp_path / "g.txt"), env=env)
    assert run.returncode == 1
    assert run.stderr == (
        f"tsh: {src}: refused by the node: file transfer is not permitted by your roles\n"
    )
    assert not (tmp_path / "g.txt").exists()


def test_large_file_checksum_with_progress_on_a_pty(fleet: Cluster, tmp_path: Path) -> None:
    """50 MiB up and back by checksum; stderr is a real pty, so the bar is drawn."""
    big = tmp_path / "big.bin"
    digest = hashlib.sha256()
    with big.open("wb") as f:
        for _ in range(50):
            chunk = os.urandom(1 << 20)
            digest.update(chunk)
            f.write(chunk)
    remote = tmp_path / "remote"
    remote.mkdir()
    master, slave = os.openpty()
    try:
        proc = subprocess.Popen(
            [str(BIN / "tsh"), "scp", str(big), _at(remote / "big.up")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=slave,
            env=fleet.env(),
        )
        os.close(slave)
        drawn = b""
        while True:  # read until the child closes the pty (EIO), so it never blocks on it
            ready, _, _ = select.select([master], [], [], 60)
            assert ready, "tsh scp went quiet on its terminal"
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            drawn += data
        assert proc.wait(timeout=60) == 0, drawn
    finally:
        os.close(master)
    text = drawn.decode()
    final = text.rstrip("\r\n").rsplit("\r", 1)[-1]
    assert final.startswith("big.bin") and " 100% " in final and "50.0MiB" in final, text
    assert re.search(r"\d+:\d\d\s*$", final), final
    assert hashlib.sha256((remote / "big.up").read_bytes()).hexdigest() == digest.hexdigest()

    run = _scp(fleet, "-q", _at(remote / "big.up"), str(tmp_path / "big.down"))
    assert (run.returncode, run.stderr) == (0, "")
    with (tmp_path / "big.down").open("rb") as f:
        assert hashlib.file_digest(f, "sha256").hexdigest() == digest.hexdigest()


def test_root_agent_serves_sftp_as_the_login(fleet: Cluster, other: OsUser, tmp_path: Path) -> None:
    """No sftp-server on the device: the built-in server runs as the login, and the
    kernel judges each file operation for that account, not for the root agent."""
    assert os.geteuid() == 0, "run as root: the agent must switch to another login"
    assert_no_sftp_server(fleet.agents[NODE].pid)
    at = f"{other.name}@{NODE}:"
    src = tmp_path / "mine.txt"
    src.write_text("for the other login")
    run = _scp(fleet, str(src), at + "up.txt")  # relative: from the login's home
    assert (run.returncode, run.stderr) == (0, "")
    st = (other.home / "up.txt").stat()
    assert (st.st_uid, st.st_gid) == (other.uid, other.gid)
    assert (other.home / "up.txt").read_text() == "for the other login"

    run = _scp(fleet, at + "up.txt", str(tmp_path / "down.txt"))
    assert (run.returncode, run.stderr) == (0, "")
    assert (tmp_path / "down.txt").read_text() == "for the other login"

    tmp_path.chmod(0o700)  # root's: the other login may not even look inside
    run = _scp(fleet, str(src), at + str(tmp_path / "planted.txt"))
    assert run.returncode == 1
    assert run.stderr == f"tsh: {tmp_path / 'planted.txt'}: permission denied\n"
    assert not (tmp_path / "planted.txt").exists()

    secret = other.home / "root-only.txt"  # in the login's home, but root's and 0600
    secret.write_text("root only")
    secret.chmod(0o600)
    run = _scp(fleet, at + "root-only.txt", str(tmp_path / "stolen.txt"))
    assert run.returncode == 1
    assert run.stderr == f"tsh: {secret.name}: permission denied\n", run.stderr
    assert not (tmp_path / "stolen.txt").exists()


def test_openssh_sftp_server_when_configured(fleet: Cluster, tmp_path: Path) -> None:
    """--sftp-server PATH: that program serves, watched for audit the same way."""
    src = tmp_path / "via-openssh.txt"
    src.write_text("x" * 321)
    run = _scp(fleet, str(src), f"{ME}@{OPENSSH_NODE}:{tmp_path}/copy.txt")
    assert (run.returncode, run.stderr) == (0, "")
    assert (tmp_path / "copy.txt").read_text() == "x" * 321
    assert (fleet.root / "openssh-used").read_text() == "started\n"

    def audited() -> list[dict[str, object]]:
        events = fleet.tctl_json("audit", "search", "--type", "file.transfer")
        return [e for e in events if e["fields"]["path"] == f"{tmp_path}/copy.txt"]

    (event,) = wait_for(audited, what="file.transfer event")
    assert event["fields"]["size"] == 321 and event["fields"]["direction"] == "upload"


def test_links_kept_through_a_configured_openssh_sftp_server(
    fleet: Cluster, tmp_path: Path
) -> None:
    """OpenSSH's server reads SYMLINK's paths in OpenSSH's order; tsh (asyncssh) sends
    the draft's to the agent: the agent swaps them, and the link comes out right."""
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "target.txt").write_text("t")
    (tree / "link").symlink_to("target.txt")
    remote = tmp_path / "remote"
    remote.mkdir()
    run = _scp(fleet, "-r", str(tree), f"{ME}@{OPENSSH_NODE}:{remote}")
    assert (run.returncode, run.stderr) == (0, "")
    assert os.readlink(remote / "tree" / "link") == "target.txt"
    assert (remote / "tree" / "link").read_text() == "t"
