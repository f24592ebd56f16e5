"""``edge-agent start``'s join token sources, in process: bad token files are one line,
``--token`` warns, the environment variable is taken out of the agent's environment."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from edge_agent.cli import main
from edge_agent.jointoken import (
    CMDLINE_WARNING,
    ENV_VAR,
    join_token,
    read_token_file,
    take_env_token,
)
from remoteler.errors import ConfigError, UsageError

PIN = "sha256:" + "0f" * 32


def first_start(tmp_path: Path, *extra: str) -> list[str]:
    """argv of a first start that must fail before it dials the hub (port 1)."""
    data = tmp_path / "agent"
    return ["start", "--data-dir", str(data), "--hub", "127.0.0.1:1", "--ca-pin", PIN, *extra]


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (None, "does not exist; write the token from 'tctl tokens add --type node' into it"),
        ("", "is empty"),
        ("\n  \n", "is empty"),
        ("two words\n", "does not hold one join token"),
        ("t\u00f6ken\n", "does not hold one join token"),
        ("x" * 5000, "does not hold one join token"),
        ("dir", "is a directory"),
    ],
)
def test_a_bad_token_file_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, words: str
) -> None:
    path = tmp_path / "join.token"
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_text(content)
        path.chmod(0o600)
    assert main(first_start(tmp_path, "--token-file", str(path))) != 0
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"edge-agent: token file {path} "), lines
    assert words in lines[0], lines[0]
    assert not (tmp_path / "agent").exists()  # refused before anything was created


def test_no_token_names_the_safe_ways(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(first_start(tmp_path)) == 2
    err = capsys.readouterr().err
    assert "first start needs --token-file (or $REMOTELER_JOIN_TOKEN)" in err, err


def test_token_on_the_command_line_warns_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "t"
    path.write_text("abc")
    assert main(first_start(tmp_path, "--token", "abc", "--token-file", str(path))) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        CMDLINE_WARNING,
        "edge-agent: give the join token once: --token-file FILE or --token, not both",
    ]


def test_a_token_from_the_config_file_does_not_warn(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = tmp_path / "agent.toml"
    conf.write_text('token = "abc"\ntoken-file = "/nonexistent"\n')
    conf.chmod(0o600)
    assert main(first_start(tmp_path, "--config", str(conf))) == 2
    assert "warning" not in capsys.readouterr().err


def test_the_environment_variable_is_taken_out() -> None:
    environ = {ENV_VAR: " tok \n", "PATH": "/bin"}
    assert take_env_token(environ) == "tok"
    assert environ == {"PATH": "/bin"}
    assert take_env_token({ENV_VAR: ""}) is None
    assert take_env_token({}) is None


def test_sources_in_order(tmp_path: Path) -> None:
    path = tmp_path / "t"
    path.write_text("from-file\n")
    path.chmod(0o600)
    assert join_token(None, str(path), "from-env") == ("from-file", None)
    assert join_token("from-flag", None, "from-env") == ("from-flag", None)
    assert join_token(None, None, "from-env") == ("from-env", None)
    assert join_token(None, None, None) == (None, None)
    path.chmod(0o640)
    token, warning = join_token(None, str(path), None)
    assert token == "from-file"
    assert warning is not None and "readable by other users (mode 0640)" in warning
    with pytest.raises(UsageError):
        join_token("a", str(path), None)


def _read_in_thread(path: Path) -> tuple[threading.Thread, list[object]]:
    got: list[object] = []

    def run() -> None:
        try:
            got.append(read_token_file(path))
        except ConfigError as exc:
            got.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, got


def test_a_pipe_is_read_and_a_fifo_without_writer_does_not_hang(tmp_path: Path) -> None:
    """``--token-file <(pass show join-token)`` or ``/dev/stdin`` hand the agent a pipe:
    it is read (no mode warning: a pipe's bits say nothing). A named pipe that nobody
    writes is one line at once, not a start that hangs in open()."""
    fifo = tmp_path / "join.fifo"
    os.mkfifo(fifo, 0o644)
    thread, got = _read_in_thread(fifo)
    thread.join(5)
    if thread.is_alive():  # the old open() blocks until a writer comes: let it go
        with open(fifo, "wb"):
            pass
        thread.join(5)
        pytest.fail("reading a token FIFO with no writer hung")
    assert isinstance(got[0], ConfigError) and "is empty" in str(got[0]), got

    read, write = os.pipe()
    os.write(write, b"tok-from-a-pipe\n")
    os.close(write)
    try:
        token, warning = read_token_file(Path(f"/proc/self/fd/{read}"))
    finally:
        os.close(read)
    assert (token, warning) == ("tok-from-a-pipe", None)
