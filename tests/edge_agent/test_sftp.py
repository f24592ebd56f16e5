"""The SFTP watcher without sockets: packets in, FileTransfer events out; and which
server the agent runs (``--sftp-server``)."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest
from helpers import BIN
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.sftp import (
    FXF_WRITE,
    FXP_CLOSE,
    FXP_DATA,
    FXP_HANDLE,
    FXP_OPEN,
    FXP_READ,
    FXP_STATUS,
    FXP_WRITE,
    FileTransfer,
    SftpWatcher,
)
from edge_agent.sftp_config import BUILTIN, configure, sftp_server
from remoteler.errors import UsageError


def s(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def packet(kind: int, req: int, body: bytes) -> bytes:
    payload = bytes([kind]) + struct.pack(">I", req) + body
    return struct.pack(">I", len(payload)) + payload


def open_(req: int, path: bytes, flags: int) -> bytes:
    return packet(FXP_OPEN, req, s(path) + struct.pack(">I", flags) + struct.pack(">I", 0))


def test_upload_then_download_one_byte_at_a_time() -> None:
    w = SftpWatcher()
    client = [
        open_(1, b"/tmp/up", FXF_WRITE | 0x08),
        packet(FXP_WRITE, 2, s(b"h1") + struct.pack(">Q", 0) + s(b"hello")),
        packet(FXP_WRITE, 3, s(b"h1") + struct.pack(">Q", 5) + s(b"!!")),
        packet(FXP_CLOSE, 4, s(b"h1")),
        open_(5, b"down", 0x01),
        packet(FXP_READ, 6, s(b"h2") + struct.pack(">Q", 0) + struct.pack(">I", 32768)),
        packet(FXP_READ, 7, s(b"h2") + struct.pack(">Q", 3) + struct.pack(">I", 32768)),
        packet(FXP_CLOSE, 8, s(b"h2")),
    ]
    server = [
        packet(FXP_HANDLE, 1, s(b"h1")),
        packet(FXP_HANDLE, 5, s(b"h2")),
        packet(FXP_DATA, 6, s(b"abc")),
        packet(FXP_STATUS, 7, struct.pack(">I", 1) + s(b"EOF") + s(b"")),
    ]
    # Replies arrive in the order the server gives them, between the requests.
    for pkt in client[:1] + server[:1] + client[1:5] + server[1:2] + client[5:7] + server[2:]:
        feed = w.client_data if pkt in client else w.server_data
        for i in range(len(pkt)):
            feed(pkt[i : i + 1])
    w.client_data(client[7])
    assert w.events_received() == [
        FileTransfer("/tmp/up", 7, "upload"),
        FileTransfer("down", 3, "download"),
    ]
    assert not w.broken


def test_open_without_data_moved_is_not_a_transfer_and_session_end_closes() -> None:
    w = SftpWatcher()
    w.client_data(open_(1, b"stat-only", 0x01))
    w.server_data(packet(FXP_HANDLE, 1, s(b"h")))
    w.client_data(packet(FXP_CLOSE, 2, s(b"h")))
    w.client_data(open_(3, b"cut", FXF_WRITE))
    w.server_data(packet(FXP_HANDLE, 3, s(b"k")))
    w.client_data(packet(FXP_WRITE, 4, s(b"k") + struct.pack(">Q", 0) + s(b"xy")))
    assert w.events_received() == []
    assert w.close() == [FileTransfer("cut", 2, "upload")]


def test_refused_open_leaves_nothing_pending() -> None:
    w = SftpWatcher()
    w.client_data(open_(1, b"/etc/shadow", 0x01))
    w.server_data(packet(FXP_STATUS, 1, struct.pack(">I", 3) + s(b"denied") + s(b"")))
    assert w.close() == []


def test_garbage_stops_watching_without_raising() -> None:
    w = SftpWatcher()
    w.client_data(b"\xff\xff\xff\xff junk")
    assert w.broken
    w.client_data(open_(1, b"x", FXF_WRITE))
    assert w.close() == []


@given(st.lists(st.binary(max_size=64), max_size=20), st.booleans())
def test_never_raises(chunks: list[bytes], server: bool) -> None:
    w = SftpWatcher()
    for chunk in chunks:
        (w.server_data if server else w.client_data)(chunk)
    w.close()


def test_legacy_scp_commands_are_recognised() -> None:
    from remoteler.filetransfer import is_legacy_scp

    assert is_legacy_scp("scp -t /tmp/x")
    assert is_legacy_scp("scp -r -d -t -- /tmp")
    assert is_legacy_scp("/usr/bin/scp -pf 'a b'")
    assert not is_legacy_scp("scp")
    assert not is_legacy_scp("echo scp -t")
    assert not is_legacy_scp("ls -t")
    assert not is_legacy_scp("scp 'unclosed")


def test_configure_takes_builtin_or_an_executable_path(tmp_path: Path) -> None:
    try:
        assert sftp_server() == BUILTIN  # the default: no OpenSSH needed
        exe = tmp_path / "sftp-server"
        exe.write_text("#!/bin/sh\n")
        exe.chmod(0o755)
        configure(str(exe))
        assert sftp_server() == str(exe)
        for bad in (str(tmp_path / "missing"), "sftp-server", str(tmp_path)):
            with pytest.raises(UsageError, match="is not an executable file"):
                configure(bad)
    finally:
        configure(BUILTIN)


def test_agent_refuses_a_bad_sftp_server_in_one_line(tmp_path: Path) -> None:
    run = subprocess.run(
        [str(BIN / "edge-agent"), "start", "--data-dir", str(tmp_path), "--sftp-server", "/nope"],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert run.returncode == 2
    assert run.stderr.startswith("edge-agent: --sftp-server '/nope' is not an executable file")
    assert run.stderr.count("\n") == 1, run.stderr


def test_choosing_the_sftp_server_loads_no_ssh_stack() -> None:
    """The agent sets --sftp-server at start; asyncssh (~7 MiB idle) waits for a session."""
    import subprocess
    import sys

    code = (
        "import sys; from edge_agent.sftp_config import configure; configure('builtin'); "
        "print('asyncssh' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr
