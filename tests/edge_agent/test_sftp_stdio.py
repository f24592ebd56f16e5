"""The built-in SFTP server (edge_agent/sftp_stdio.py) as its own process, with no
agent around it: the real OpenSSH ``sftp`` client driving it over ``sftp -D`` (a
socket pair on stdin/stdout), and raw packets for the limits it keeps."""

from __future__ import annotations

import asyncio
import os
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.sftp_stdio import MAX_DATA, MAX_HANDLES, MAX_PACKET, PipeWriter, serve

CHILD = [sys.executable, "-I", "-m", "edge_agent.sftp_child"]
OPENSSH = ["--client-version", "SSH-2.0-OpenSSH_9.2p1"]


def _sftp() -> str:
    found = shutil.which("sftp")
    assert found, "OpenSSH's sftp client is missing: apt-get install openssh-client"
    return found


def _batch(tmp_path: Path, commands: str) -> subprocess.CompletedProcess[str]:
    server = tmp_path / "server.sh"  # sftp -D runs one program: the child, its options
    server.write_text(f"#!/bin/sh\nexec {' '.join([*CHILD, *OPENSSH])}\n")
    server.chmod(0o755)
    batch = tmp_path / "batch"
    batch.write_text(commands)
    return subprocess.run(
        [_sftp(), "-D", str(server), "-b", str(batch)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )


def test_openssh_sftp_client_against_the_builtin_server(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("alpha\n")
    big = os.urandom(3 * MAX_PACKET + 17)  # several packets, a short last one
    (tmp_path / "big.bin").write_bytes(big)
    run = _batch(
        tmp_path,
        "put a.txt b.txt\nput big.bin up.bin\nget up.bin back.bin\nmkdir d\n"
        "rename b.txt d/c.txt\nsymlink d/c.txt link\nchmod 640 d/c.txt\nls -l d\n"
        "rmdir nope\n",
    )
    assert run.returncode == 1, run.stderr  # the last command failed, as asked
    assert "nope" in run.stderr and "No such file" in run.stderr
    assert (tmp_path / "back.bin").read_bytes() == big
    assert (tmp_path / "d" / "c.txt").read_text() == "alpha\n"
    assert (tmp_path / "d" / "c.txt").stat().st_mode & 0o777 == 0o640
    # OpenSSH sends SYMLINK's paths reversed: the server must know the client.
    assert os.readlink(tmp_path / "link") == "d/c.txt"
    assert "c.txt" in run.stdout


def _packet(kind: int, body: bytes) -> bytes:
    return struct.pack(">IB", len(body) + 1, kind) + body


def _string(b: bytes) -> bytes:
    return struct.pack(">I", len(b)) + b


def _reply(out: IO[bytes]) -> bytes:
    """One SFTP packet from the server (the child serves the directory it started in)."""
    (n,) = struct.unpack(">I", out.read(4))
    return out.read(n)


def test_limits_as_openssh_and_oversized_packets_end_the_session(tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_bytes(b"z" * (1 << 20))
    proc = subprocess.Popen(
        CHILD, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path
    )
    assert proc.stdin and proc.stdout and proc.stderr
    try:
        proc.stdin.write(_packet(1, struct.pack(">I", 6)))  # INIT offering v6: v3 is served
        proc.stdin.flush()
        version = _reply(proc.stdout)
        assert version[0] == 2 and struct.unpack(">I", version[1:5])[0] == 3
        assert b"limits@openssh.com" in version

        proc.stdin.write(_packet(200, struct.pack(">I", 1) + _string(b"limits@openssh.com")))
        proc.stdin.flush()
        limits = _reply(proc.stdout)
        assert limits[0] == 201
        assert struct.unpack(">QQQQ", limits[5:37]) == (MAX_PACKET, MAX_DATA, MAX_DATA, MAX_HANDLES)

        proc.stdin.write(_packet(3, struct.pack(">I", 2) + _string(b"big") + bytes(8)))  # OPEN
        proc.stdin.flush()
        handle = _reply(proc.stdout)
        assert handle[0] == 102
        read = struct.pack(">I", 3) + handle[5:] + struct.pack(">QI", 0, 1 << 20)
        proc.stdin.write(_packet(5, read))  # READ of 1 MiB: one capped answer
        proc.stdin.flush()
        data = _reply(proc.stdout)
        assert data[0] == 103 and struct.unpack(">I", data[5:9])[0] == MAX_DATA

        proc.stdin.write(struct.pack(">I", MAX_PACKET + 1))  # past the limit: the end
        proc.stdin.flush()
        assert proc.stdout.read() == b""
        assert proc.wait(timeout=10) == 0
        assert proc.stderr.read() == b"", "nothing on stderr: it is the user's channel"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize(
    "sent",
    [b"", b"\x00\x00", _packet(1, b"\x00"), struct.pack(">I", MAX_PACKET + 1)],
    ids=["nothing", "half-a-length", "short-init", "oversized-init"],
)
def test_a_client_gone_before_its_init_ends_quietly(tmp_path: Path, sent: bytes) -> None:
    """EOF before a whole INIT (a client that connected and left): exit 0 and nothing on
    stderr, which is the user's channel (it said 'internal error')."""
    run = subprocess.run(CHILD, input=sent, capture_output=True, timeout=30, cwd=tmp_path)
    assert (run.returncode, run.stderr) == (0, b"")


def test_the_child_loads_no_ssh_stack(tmp_path: Path) -> None:
    """Serving, the child has only asyncssh's SFTP modules: no ``cryptography``
    library mapped (the whole of asyncssh cost 40 MiB RSS and 1-1.5 s a session)."""
    proc = subprocess.Popen(
        CHILD, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path
    )
    assert proc.stdin and proc.stdout and proc.stderr
    try:
        proc.stdin.write(_packet(1, struct.pack(">I", 3)))
        proc.stdin.write(_packet(16, struct.pack(">I", 1) + _string(b".")))  # REALPATH
        proc.stdin.flush()
        assert _reply(proc.stdout)[0] == 2
        assert _reply(proc.stdout)[0] == 104
        maps = Path(f"/proc/{proc.pid}/maps").read_text()
        assert "cryptography" not in maps, "asyncssh's whole SSH stack was loaded"
        proc.stdin.close()
        assert proc.wait(timeout=10) == 0
        assert proc.stderr.read() == b""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_open_handles_capped_as_openssh(tmp_path: Path) -> None:
    """OPENDIR and OPEN past MAX_HANDLES open handles fail (SSH_FX_FAILURE) and the
    session goes on; closing one makes room. Without the cap each OPENDIR (20 bytes
    from the client) kept a directory iterator for the session's life."""
    (tmp_path / "f").write_bytes(b"x")
    proc = subprocess.Popen(
        CHILD, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path
    )
    assert proc.stdin and proc.stdout and proc.stderr
    try:
        proc.stdin.write(_packet(1, struct.pack(">I", 3)))
        for rid in range(MAX_HANDLES + 1):  # one too many, sent in one go
            proc.stdin.write(_packet(11, struct.pack(">I", rid) + _string(b".")))  # OPENDIR
        proc.stdin.flush()
        _reply(proc.stdout)
        handles = [_reply(proc.stdout) for _ in range(MAX_HANDLES + 1)]
        assert all(h[0] == 102 for h in handles[:MAX_HANDLES]), "every handle up to the cap"
        assert handles[-1][0] == 101 and struct.unpack(">I", handles[-1][5:9])[0] == 4
        proc.stdin.write(_packet(3, struct.pack(">I", 9000) + _string(b"f") + bytes(8)))  # OPEN
        proc.stdin.flush()
        refused = _reply(proc.stdout)
        assert refused[0] == 101 and struct.unpack(">I", refused[5:9])[0] == 4
        proc.stdin.write(_packet(4, struct.pack(">I", 9001) + handles[0][5:]))  # CLOSE one
        proc.stdin.write(_packet(3, struct.pack(">I", 9002) + _string(b"f") + bytes(8)))
        proc.stdin.flush()
        assert _reply(proc.stdout)[0] == 101  # the close's OK
        assert _reply(proc.stdout)[0] == 102, "room again after a close"
        proc.stdin.close()
        assert proc.wait(timeout=10) == 0
        assert proc.stderr.read() == b""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--user"], "usage"),
        (["--bogus", "x"], "unknown or repeated option '--bogus'"),
        (["--user", "no-such-account-here"], "cannot start"),
    ],
)
def test_bad_options_one_line_exit_1(args: list[str], said: str) -> None:
    run = subprocess.run(
        [*CHILD, *args], capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL
    )
    assert run.returncode == 1
    assert run.stderr.startswith("sftp: cannot start: ") and said in run.stderr
    assert run.stderr.count("\n") == 1, run.stderr


#: READ requests sent without reading a reply: 40,000 x 255 KiB would be 10 GiB of replies.
#: The child holds about 1 MiB of requests (its reader's buffer) and the pipe 64 KiB.
ASKED = 40_000


def test_a_client_that_reads_no_replies_is_not_read_either(tmp_path: Path) -> None:
    """Requests keep coming, replies are never read: the child stops reading requests
    once a reply waits (the pipe, then the SSH window, push back), so its memory stays
    at a reply or two instead of one 255 KiB reply per request queued."""
    (tmp_path / "f").write_bytes(b"r" * MAX_DATA)
    proc = subprocess.Popen(
        CHILD,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=tmp_path,
    )
    assert proc.stdin and proc.stdout
    try:
        proc.stdin.write(_packet(1, struct.pack(">I", 3)))
        proc.stdin.write(_packet(3, struct.pack(">I", 1) + _string(b"f") + bytes(8)))
        proc.stdin.flush()
        _reply(proc.stdout)
        handle = _reply(proc.stdout)[5:]
        read = _packet(5, struct.pack(">I", 2) + handle + struct.pack(">QI", 0, MAX_DATA))
        os.set_blocking(proc.stdin.fileno(), False)
        sent = 0
        deadline = time.monotonic() + 30
        while sent < ASKED and time.monotonic() < deadline:
            try:
                os.write(proc.stdin.fileno(), read)
                sent += 1
            except BlockingIOError:  # the child pushes back when it stays full for 2 s
                _, writable, _ = select.select([], [proc.stdin], [], 2.0)
                if not writable:
                    break
        status = Path(f"/proc/{proc.pid}/status").read_text()
        rss_kib = int(next(x for x in status.splitlines() if x.startswith("VmRSS")).split()[1])
        assert sent < ASKED, "every request was read: nothing pushed back"
        assert rss_kib < 100 * 1024, f"{rss_kib >> 10} MiB after {sent} unread replies"
    finally:
        proc.kill()
        proc.wait()


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=64),  # garbage
            st.builds(  # a well-framed packet of any type with a random body
                lambda kind, body: _packet(kind, body),
                st.integers(0, 255),
                st.binary(max_size=48),
            ),
        ),
        max_size=8,
    )
)
def test_any_bytes_end_the_session_quietly(chunks: list[bytes]) -> None:
    """Whatever follows INIT, serve() returns (no exception out of it), confined to
    a scratch directory by asyncssh's chroot mapping."""
    with tempfile.TemporaryDirectory() as scratch:

        async def run() -> None:
            reader = asyncio.StreamReader()
            reader.feed_data(_packet(1, struct.pack(">I", 3)) + b"".join(chunks))
            reader.feed_eof()
            out = PipeWriter(devnull)
            await asyncio.wait_for(serve(reader, out, chroot=scratch), 10)

        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            asyncio.run(run())
        finally:
            os.close(devnull)
