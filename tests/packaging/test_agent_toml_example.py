"""packaging/agent.toml.example parses and shows every 'edge-agent start' option."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from edge_agent import config
from edge_agent.cli import build_parser

EXAMPLE = Path(__file__).resolve().parents[2] / "packaging" / "agent.toml.example"
COMMENTED_KEY = re.compile(r"^# ?([a-z][a-z0-9-]*) = ", re.MULTILINE)


def test_the_example_covers_every_option_and_every_line_is_valid(tmp_path: Path) -> None:
    text = EXAMPLE.read_text()
    tomllib.loads(text)  # valid as shipped
    uncommented = COMMENTED_KEY.sub(r"\1 = ", text)  # every shown key switched on
    path = tmp_path / "agent.toml"
    path.write_text(uncommented)
    path.chmod(0o600)
    start = config.subparser(build_parser(), "start")
    values = config.load(path, start)  # types checked against the parser
    keys = set(tomllib.loads(uncommented))
    missing = set(config.options(start)) - keys
    assert not missing, f"add {sorted(missing)} to packaging/agent.toml.example"
    assert len(values) == len(keys)
