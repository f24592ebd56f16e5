"""tctl/cli.py main(): whatever goes wrong, one line on stderr and exit 1, no traceback."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tctl import cli as tctl


def _boom(*args: Any) -> None:
    raise RuntimeError("something nobody foresaw")


def test_an_unforeseen_error_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(tctl, "find_target", _boom)
    monkeypatch.delenv("REMOTELER_DEBUG", raising=False)
    assert tctl.main(["--data-dir", str(tmp_path), "status"]) == 1
    err = capsys.readouterr().err
    assert err == (
        "tctl: unexpected RuntimeError: something nobody foresaw; please report it "
        "(REMOTELER_DEBUG=1 shows where)\n"
    )
    monkeypatch.setenv("REMOTELER_DEBUG", "1")
    with pytest.raises(RuntimeError):
        tctl.main(["--data-dir", str(tmp_path), "status"])


def test_output_cut_short_by_a_closed_pipe_is_quiet(tmp_path: Path) -> None:
    """``tctl audit search | head``: head closing the pipe is no error to report."""
    from helpers import BIN, Cluster, free_port

    from hub.storage.sqlite import open_sqlite
    from remoteler.audit.events import AuditEvent

    async def fill(data: Path) -> None:
        storage = await open_sqlite(data)
        try:
            events = [
                AuditEvent(
                    id=f"e{i:05}", type="exec", time=1.0 + i, node="n", seq=i, user="u" * 200
                )
                for i in range(2000)
            ]  # about 500 KiB of table: more than a pipe holds
            await storage.audit.insert_checked("n", events)
        finally:
            await storage.close()

    cluster = Cluster(tmp_path, free_port())
    cluster.data.mkdir(mode=0o700)
    asyncio.run(fill(cluster.data))
    cluster.start_hub()
    try:
        argv = ["--data-dir", str(cluster.data), "audit", "search", "--limit", "5000"]
        proc = subprocess.Popen(
            [str(BIN / "tctl"), *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.read(100)
        proc.stdout.close()  # as head does
        err = proc.stderr.read().decode()
        assert proc.wait(timeout=30) == 141, err  # 128 + SIGPIPE, as a shell reports it
        assert err == ""
    finally:
        cluster.stop()
