"""The agent's TOML config file: every start flag has a key, types are checked, flags win."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from edge_agent import config
from edge_agent.cli import build_parser
from remoteler.errors import ConfigError

#: values for options whose type is a function of their own (the test cannot guess one)
SAMPLES: dict[str, Any] = {}


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def sample(key: str, action: argparse.Action) -> Any:
    """A file value for ``action`` that differs from its default."""
    if key in SAMPLES:
        return SAMPLES[key]
    if isinstance(action, argparse._StoreTrueAction):
        return True
    if isinstance(action, argparse._StoreFalseAction):
        return True  # the flag given: dest becomes False
    if isinstance(action, argparse.BooleanOptionalAction):
        return not action.default
    if isinstance(action, argparse._CountAction):
        return 3
    if action.choices is not None:
        return next(c for c in action.choices if c != action.default)
    one: Any
    if action.type is int:
        one = 7
    elif action.type is float:
        one = 7.5
    elif action.type is None or action.type is str:
        one = "sample-" + key
    else:
        pytest.fail(f"add a sample value for {key!r} (type {action.type}) to SAMPLES")
    if isinstance(action, argparse._AppendAction) or action.nargs in ("*", "+"):
        return [one, one]
    return one


def start_parser() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    parser = build_parser()
    return parser, config.subparser(parser, "start")


def write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def parse(argv: list[str], environ: dict[str, str] | None = None) -> argparse.Namespace:
    parser, start = start_parser()
    args = parser.parse_args(argv)
    return config.apply(parser, start, argv, args, environ=environ or {})


def test_every_start_option_can_be_set_from_the_file(tmp_path: Path) -> None:
    parser, start = start_parser()
    opts = config.options(start)
    dests = {a.dest for a in start._actions if a.option_strings} - {"help", "config"}
    assert {a.dest for a in opts.values()} == dests, "an option has no config key"
    for key, action in opts.items():
        assert config.supported(action), f"config.py cannot check {key!r}'s kind of action"
    lines = [f"{key} = {toml_value(sample(key, action))}" for key, action in opts.items()]
    path = write(tmp_path / "agent.toml", "\n".join(lines) + "\n")
    args = parse(["start", "--config", str(path)])
    defaults = vars(parser.parse_args(["start"]))
    for key, action in opts.items():
        got = getattr(args, action.dest)
        assert got != defaults[action.dest], f"{key!r} from the file was not applied"
        if isinstance(action, argparse._StoreFalseAction):
            assert got is False
        elif not isinstance(action, argparse._StoreTrueAction):
            want = sample(key, action)
            assert got == (float(want) if action.type is float else want), key


def test_command_line_flags_win_over_the_file(tmp_path: Path) -> None:
    path = write(
        tmp_path / "agent.toml",
        'hub = "file:1"\nname = "from-file"\nheartbeat-interval = 5\nlabels = "a=1"\n',
    )
    args = parse(["start", "--config", str(path), "--name", "from-flag"])
    assert args.name == "from-flag"
    assert args.hub == "file:1"
    assert args.heartbeat_interval == 5.0 and isinstance(args.heartbeat_interval, float)
    assert args.labels == "a=1"
    assert args.config == str(path)


def test_a_flag_given_with_its_default_value_still_wins(tmp_path: Path) -> None:
    path = write(tmp_path / "agent.toml", "allowed-misses = 9\n")
    args = parse(["start", "--config", str(path), "--allowed-misses", "2"])
    assert args.allowed_misses == 2


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('colour = "blue"\n', ["unknown key 'colour'", "agent.toml"]),
        ('ca_pin = "sha256:x"\n', ["unknown key 'ca_pin'", "did you mean 'ca-pin'"]),
        ('heartbeat-interval = "60"\n', ["'heartbeat-interval' must be a number", "agent.toml"]),
        ("allowed-misses = 2.5\n", ["'allowed-misses' must be an integer"]),
        ("allowed-misses = true\n", ["'allowed-misses' must be an integer"]),
        ("hub = 443\n", ["'hub' must be a string, not an integer"]),
        ('audit-policy = "yolo"\n', ["'audit-policy' must be one of"]),
        ("[hub]\nx = 1\n", ["'hub' must be a string, not a table"]),
        ("hub = ", ["not valid TOML"]),
    ],
)
def test_bad_files_are_refused_with_one_line_naming_the_file(
    tmp_path: Path, text: str, words: list[str]
) -> None:
    path = write(tmp_path / "agent.toml", text)
    with pytest.raises(ConfigError) as err:
        parse(["start", "--config", str(path)])
    message = str(err.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_a_token_in_a_file_others_can_read_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "agent.toml", 'token = "s3cret-token"\n', mode=0o644)
    with pytest.raises(ConfigError) as err:
        parse(["start", "--config", str(path)])
    assert "chmod 600" in str(err.value) and "0644" in str(err.value)
    assert "s3cret-token" not in str(err.value)
    path.chmod(0o600)
    assert parse(["start", "--config", str(path)]).token == "s3cret-token"
    # Without a token the file may be world-readable.
    write(path, 'hub = "h:1"\n', mode=0o644)
    assert parse(["start", "--config", str(path)]).hub == "h:1"


def test_which_file_is_read(tmp_path: Path) -> None:
    env_file = write(tmp_path / "env.toml", 'name = "from-env"\n')
    creds = tmp_path / "creds"
    creds.mkdir()
    write(creds / "agent.toml", 'name = "from-credential"\n')
    flag_file = write(tmp_path / "flag.toml", 'name = "from-flag-file"\n')
    env = {config.ENV_VAR: str(env_file), "CREDENTIALS_DIRECTORY": str(creds)}
    assert parse(["start", "--config", str(flag_file)], env).name == "from-flag-file"
    assert parse(["start"], env).name == "from-env"
    assert parse(["start"], {"CREDENTIALS_DIRECTORY": str(creds)}).name == "from-credential"
    if not config.DEFAULT_PATH.exists():
        args = parse(["start", "--name", "n"], {})
        assert args.config is None and args.name == "n"
    with pytest.raises(ConfigError, match="does not exist"):
        parse(["start"], {config.ENV_VAR: str(tmp_path / "missing.toml")})


def test_the_agent_process_stops_with_one_line_on_a_bad_file(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = write(tmp_path / "agent.toml", 'hub = "h:1"\nheartbeat = 5\n')
    out = subprocess.run(
        [str(Path(sys.executable).parent / "edge-agent"), "start", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 1
    assert out.stderr == f"edge-agent: unknown key 'heartbeat' in {path} " + (
        "(keys are the 'edge-agent start' flags without '--')\n"
    )
