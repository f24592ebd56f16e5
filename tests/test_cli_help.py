"""Every tool's command line: --version, each option's default in its help, an example
per subcommand, and tctl's global flags after the subcommand. Walks the parsers, so a
flag added later without these fails here."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from edge_agent import cli as agent_cli
from firmware_tools import cli as fw_cli
from hub import cli as hub_cli
from remoteler import clihelp
from tctl import cli as tctl
from tsh import cli as tsh_cli

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TOOLS: dict[str, Callable[[], argparse.ArgumentParser]] = {
    "tsh": tsh_cli.build_parser,
    "tctl": tctl.build_parser,
    "hub": hub_cli.build_parser,
    "edge-agent": agent_cli.build_parser,
    "firmware-tools": fw_cli.build_parser,
}


def _option_help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    formatter = parser._get_formatter()
    assert isinstance(formatter, clihelp.HelpFormatter), parser.prog
    text = formatter._get_help_string(action)
    return formatter._expand_help(argparse.Action([], "x", default=action.default, help=text))


@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_every_option_says_its_default_and_every_subcommand_has_an_example(tool: str) -> None:
    missing: list[str] = []
    for path, parser in clihelp.walk(TOOLS[tool]()):
        if path and "example:" not in (parser.epilog or ""):
            missing.append(f"{tool} {path}: no example (clihelp.finish examples)")
        if path and tool not in (parser.epilog or ""):
            missing.append(f"{tool} {path}: the example does not run {tool}")
        for action in parser._actions:
            if not clihelp.needs_default(action):
                continue
            if not action.help or "default" not in _option_help(parser, action).lower():
                name = "/".join(action.option_strings) or action.dest
                missing.append(f"{tool} {path} {name}: help does not say the default")
    assert not missing, "\n".join(missing)


@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_version_names_the_tool_and_protocol(tool: str) -> None:
    run = subprocess.run([str(BIN / tool), "--version"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout == f"{tool} {clihelp.VERSION} (protocol v{clihelp.PROTOCOL_VERSION})\n"


def test_tctl_takes_global_flags_after_the_subcommand(tmp_path: Path) -> None:
    args = tctl.build_parser().parse_args(["users", "ls", "--data-dir", str(tmp_path)])
    assert args.data_dir == str(tmp_path)
    args = tctl.build_parser().parse_args(["--data-dir", "A", "users", "ls"])
    assert args.data_dir == "A"
    run = subprocess.run(
        [str(BIN / "tctl"), "status", "--data-dir", str(tmp_path / "nothing")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode != 0 and run.stderr.count("\n") == 1
    assert str(tmp_path / "nothing") in run.stderr  # the flag given after 'status' was used


@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_no_example_puts_a_secret_on_the_command_line(tool: str) -> None:
    """The examples are what people copy: a join token or password flag in one ends up
    in every user's ps (docs/security.md, the join token)."""
    for path, parser in clihelp.walk(TOOLS[tool]()):
        for line in (parser.epilog or "").splitlines():
            words = line.split()
            assert not {"--token", "--password"} & set(words), f"{tool} {path}: {line.strip()}"
