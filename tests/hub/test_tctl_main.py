"""hub/tctl.py main(): whatever goes wrong, one line on stderr and exit 1, no traceback."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from hub import tctl


async def _boom(args: argparse.Namespace) -> None:
    raise RuntimeError("something nobody foresaw")


def test_an_unforeseen_error_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(tctl, "cmd_status", _boom)
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
