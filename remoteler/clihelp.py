"""What every Remoteler command line shares: ``--version``, defaults in help, examples.

Each tool builds its argparse tree as usual, then calls :func:`finish` with one
example per subcommand. ``tests/test_cli_help.py`` walks every tool's tree: an
option whose help does not say its default, or a subcommand without an example,
fails the suite.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Mapping
from typing import Any

from remoteler.protocol import PROTOCOL_VERSION, VERSION


def version_text(tool: str) -> str:
    """``tsh 0.1.0 (protocol v1)``: what ``--version`` prints."""
    return f"{tool} {VERSION} (protocol v{PROTOCOL_VERSION})"


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Appends ``(default: X)`` where the help does not already say the default.

    Flags (no value), required options, and options whose default is None are
    left as written: a None default must be explained in the help text itself
    (``(default: prompted)``), since "None" tells a user nothing.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text.lower() or not needs_default(action):
            return text
        if action.default is None or action.default is argparse.SUPPRESS:
            return text  # the help must say it in words
        shown = "none" if action.default in ("", [], ()) else "%(default)s"
        return f"{text} (default: {shown})".lstrip()


def needs_default(action: argparse.Action) -> bool:
    """Whether ``action``'s help must say its default (tests/test_cli_help.py)."""
    if action.help == argparse.SUPPRESS or action.required or action.nargs == 0:
        return False
    if isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
        return False
    if not action.option_strings:  # positionals: only optional ones have a default
        return action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE)
    return True


def walk(
    parser: argparse.ArgumentParser, path: str = ""
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """``(path, parser)`` for ``parser`` and every subcommand under it, e.g. ``users add``."""
    yield path, parser
    seen: set[int] = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                if id(sub) not in seen:  # an alias names the same parser twice
                    seen.add(id(sub))
                    yield from walk(sub, f"{path} {name}".strip())


def finish(
    parser: argparse.ArgumentParser,
    tool: str,
    examples: Mapping[str, str],
    leaf_options: Any = None,
) -> argparse.ArgumentParser:
    """Add ``--version``; set the help formatter and each subcommand's example.

    ``examples`` maps a subcommand path (``"users add"``) to one or more command
    lines. ``leaf_options(parser)``, if given, adds options to every subcommand
    that has no subcommands of its own (global flags also accepted after it).
    """
    parser.add_argument("--version", action="version", version=version_text(tool))
    for path, sub in walk(parser):
        sub.formatter_class = HelpFormatter
        lines = examples.get(path)
        if lines:
            body = "\n".join(f"  {line}" for line in lines.strip().splitlines())
            sub.epilog = f"example:\n{body}"
        for action in sub._actions:
            if not action.help and needs_default(action):  # argparse hides help-less ones
                action.help = "one of %(choices)s" if action.choices else "value"
        is_leaf = not any(isinstance(a, argparse._SubParsersAction) for a in sub._actions)
        if path and is_leaf and leaf_options is not None:
            leaf_options(sub)
    return parser
