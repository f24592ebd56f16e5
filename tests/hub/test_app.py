"""The composition root (hub/app.py) in-process, on a real data dir and a real port:
it starts every service, and a stop, or a start that fails half-way, undoes all of
them: no file of the data dir left open, no sign of life left, no task left running."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from hub.alive import alive_path, lock_held
from hub.app import HubApp
from hub.cli import build_parser
from remoteler.addr import parse_hostport


def _args(data: Path, listen: str) -> object:
    return build_parser().parse_args(
        ["start", "--data-dir", str(data), "--listen", listen, "--gc-interval", "0"]
    )


def _open_under(path: Path) -> list[str]:
    """This process's open descriptors on files under ``path``."""
    opened = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(path)):
            opened.append(target)
    return opened


def _others() -> set[asyncio.Task[object]]:
    return {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}


@pytest.fixture
def busy_port() -> Iterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


async def test_a_start_that_fails_half_way_undoes_what_had_started(
    tmp_path: Path, busy_port: int
) -> None:
    data = tmp_path / "data"
    before = _others()
    app = HubApp(_args(data, f"127.0.0.1:{busy_port}"))  # type: ignore[arg-type]
    with pytest.raises(OSError):  # the port is taken: the last step before serving
        await app.start()
    assert (data / "hub.db").exists(), "the database was opened before the port"
    assert _open_under(data) == []
    assert not alive_path(data).exists()
    assert _others() <= before


async def test_stop_undoes_every_start(tmp_path: Path) -> None:
    data = tmp_path / "data"
    before = _others()
    async with HubApp(_args(data, "127.0.0.1:0")) as app:  # type: ignore[arg-type]
        assert (data / "hub.addr").read_text().strip() == app.addr
        assert lock_held(alive_path(data)) is True
        assert app.tasks and not any(t.done() for t in app.tasks)
        host, port = parse_hostport(app.addr)
        tls = ssl.create_default_context()
        tls.check_hostname, tls.verify_mode = False, ssl.CERT_NONE
        _, writer = await asyncio.open_connection(host, port, ssl=tls)  # it serves TLS
        writer.close()
        await writer.wait_closed()
        assert _open_under(data), "the hub holds its files while it runs"
    assert _open_under(data) == []
    assert not (data / "hub.addr").exists()
    assert not alive_path(data).exists()
    assert all(t.done() for t in app.tasks)
    await asyncio.sleep(0)  # let the closed connections' handlers finish
    assert _others() <= before
    await app.stop()  # twice is harmless
