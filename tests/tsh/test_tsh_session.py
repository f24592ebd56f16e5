"""``tsh ssh`` as a process, through a real hub and agent: stdin, stderr, exit codes, volume."""

from __future__ import annotations

import hashlib
import os
import pwd
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import BIN, Cluster, free_port, wait_for

ME = pwd.getpwuid(os.geteuid()).pw_name


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One hub and one agent ("dev1") shared by this module; tsh logged in as ``ME``."""
    cluster = Cluster(tmp_path_factory.mktemp("cluster"), free_port())
    cluster.start_hub()
    try:
        cluster.add_user("sam", [ME])
        cluster.start_agent("dev1", "env=lab")
        wait_for(lambda: cluster.node_online("dev1"), what="dev1 online")
        login = cluster.login("sam")
        assert login.returncode == 0, login.stderr
        yield cluster
    finally:
        cluster.stop()


def _tsh(node: Cluster, command: str, **kwargs: object) -> subprocess.CompletedProcess[bytes]:
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    kwargs.setdefault("timeout", 60)
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        [str(BIN / "tsh"), "ssh", f"{ME}@dev1", command],
        capture_output=True,
        env=node.env(),
        **kwargs,
    )


def test_stdin_from_a_pipe_reaches_the_command_and_eof_ends_it(node: Cluster) -> None:
    data = b"hello\n" + os.urandom(100_000)
    run = _tsh(node, "cat; echo END", input=data, stdin=None)
    assert run.returncode == 0, run.stderr
    assert run.stdout == data + b"END\n"


def test_stdin_from_a_file(node: Cluster, tmp_path: Path) -> None:
    path = tmp_path / "in"
    data = os.urandom(1_000_000)
    path.write_bytes(data)
    with path.open("rb") as f:
        run = _tsh(node, "sha256sum", stdin=f)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()


def test_stdin_from_dev_null_is_an_immediate_eof(node: Cluster) -> None:
    # as under cron, systemd or CI: stdin is /dev/null, which epoll cannot watch
    run = _tsh(node, "cat; echo END", timeout=30)
    assert (run.returncode, run.stdout) == (0, b"END\n"), run.stderr


def test_stderr_goes_to_stderr(node: Cluster) -> None:
    run = _tsh(node, "echo out; echo err >&2; exit 4")
    assert run.stdout == b"out\n"
    assert run.stderr == b"err\n"
    assert run.returncode == 4


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL, signal.SIGINT])
def test_command_killed_by_a_signal_makes_tsh_exit_128_plus_n(
    node: Cluster, sig: signal.Signals
) -> None:
    run = _tsh(node, f"kill -{sig.name.removeprefix('SIG')} $$")
    assert run.returncode == 128 + sig.value, run.stderr
    assert f"killed by signal {sig.name.removeprefix('SIG')}" in run.stderr.decode()


def test_large_output_arrives_complete(node: Cluster) -> None:
    size = 5 * 1024 * 1024
    run = _tsh(node, f"head -c {size} /dev/urandom | tee /dev/stderr | sha256sum")
    assert run.returncode == 0
    assert len(run.stderr) == size
    assert run.stdout.split()[0].decode() == hashlib.sha256(run.stderr).hexdigest()


def test_large_input_arrives_complete(node: Cluster) -> None:
    data = os.urandom(5 * 1024 * 1024)
    run = _tsh(node, "sha256sum; wc -c </dev/null", input=data, stdin=None)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()


def test_output_to_a_slow_reader_is_complete(node: Cluster) -> None:
    """tsh's stdout is a pipe that fills up: nothing is lost or reordered."""
    size = 3 * 1024 * 1024
    proc = subprocess.Popen(
        [str(BIN / "tsh"), "ssh", f"{ME}@dev1", f"seq 1 {size // 8}"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=node.env(),
    )
    try:
        wait_for(lambda: proc.poll() is not None or _pipe_is_full(proc), timeout=30, what="full")
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert out == b"".join(b"%d\n" % i for i in range(1, size // 8 + 1))


def _pipe_is_full(proc: subprocess.Popen[bytes]) -> bool:
    import fcntl
    import termios

    assert proc.stdout is not None
    buf = bytearray(4)
    fcntl.ioctl(proc.stdout.fileno(), termios.FIONREAD, buf)
    return int.from_bytes(buf, "little") >= 60_000


def test_input_nobody_reads_is_held_back_end_to_end(node: Cluster, tmp_path: Path) -> None:
    """tsh, hub and agent all stop taking input the command does not read (no memory pile-up)."""
    import select

    flag = tmp_path / "go"
    proc = subprocess.Popen(
        [
            str(BIN / "tsh"),
            "ssh",
            f"{ME}@dev1",
            f"while [ ! -e {flag} ]; do sleep 0.05; done; wc -c",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=node.env(),
    )
    assert proc.stdin is not None
    fd = proc.stdin.fileno()
    os.set_blocking(fd, False)
    chunk = b"q" * 65536
    sent = 0
    try:
        while sent < 256 * 1024 * 1024:
            # bounded wait: 1 s without room in the pipe means everything downstream is full
            if not select.select([], [fd], [], 1.0)[1]:
                break
            try:
                sent += os.write(fd, chunk)
            except BlockingIOError:
                continue
        assert sent < 64 * 1024 * 1024, f"{sent >> 20} MiB taken with nobody reading"
        flag.touch()
        os.set_blocking(fd, True)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert int(out.split()[0]) == sent
