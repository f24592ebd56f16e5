"""``hub start --storage ...``: what is refused before anything is opened, in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from hub.cli import build_parser, main


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["--storage", "postgresql://u:secretpw@127.0.0.1:1/db", "--ca-passphrase-file", "P"],
            "hub: storage: --storage: the URL contains a password: put it in a file and give "
            "--storage-password-file FILE (or set PGPASSFILE) instead",
        ),
        (
            ["--storage", "postgresql://u@127.0.0.1:1/db"],
            "hub: --storage postgresql://... needs --ca-passphrase-file FILE: the CA keys in "
            "the shared database are encrypted with it (every hub of the cluster gives the same)",
        ),
        (
            ["--storage", "postgresql://u@127.0.0.1:1/db", "--ca-passphrase-file", "P"],
            "hub: storage: PostgreSQL at 127.0.0.1:1/db is unavailable: connection failed: "
            'connection to server at "127.0.0.1", port 1 failed: Connection refused',
        ),
        (
            ["--storage-password-file", "P"],
            "hub: --storage-password-file is for --storage postgresql://... only",
        ),
        (
            ["--storage", "mysql://u@h/db"],
            "hub: storage: unknown --storage 'mysql': give sqlite or postgresql://USER@HOST/DB",
        ),
    ],
    ids=["password-in-url", "no-passphrase", "server-down", "password-file-alone", "unknown"],
)
def test_bad_storage_options_are_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    expected: str,
) -> None:
    monkeypatch.delenv("REMOTELER_CA_PASSPHRASE", raising=False)
    monkeypatch.delenv("REMOTELER_CA_PASSPHRASE_FILE", raising=False)
    passphrase = tmp_path / "ca.passphrase"
    passphrase.write_text("a passphrase\n")
    passphrase.chmod(0o600)
    args = [str(passphrase) if a == "P" else a for a in args]
    code = main(["start", "--data-dir", str(tmp_path / "data"), "--listen", "127.0.0.1:0", *args])
    out = capsys.readouterr()
    assert code != 0
    assert out.err.strip() == expected
    assert "secretpw" not in out.err + out.out
    assert not (tmp_path / "data").exists()  # refused before anything was written


def test_storage_flags_state_their_defaults() -> None:
    start = build_parser()._subparsers._group_actions[0].choices["start"]  # type: ignore[union-attr]
    helps = {a.dest: a.help or "" for a in start._actions}
    assert "(default: sqlite" in helps["storage"]
    assert "(default: none, libpq's PGPASSFILE" in helps["storage_password_file"]
