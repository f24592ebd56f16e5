"""``edge-agent start``'s join token sources, in process: bad token files are one line,
``--token`` warns, the environment variable is taken out of the agent's environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.cli import main
from edge_agent.jointoken import CMDLINE_WARNING, ENV_VAR, join_token, take_env_token
from remoteler.errors import UsageError

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
