"""The agent's configuration file: one TOML key for every ``edge-agent start`` flag.

The keys are derived from the argparse parser itself, so a flag added to
``start`` is a config key at once: the key is the long flag without its dashes
(``--ca-pin`` -> ``ca-pin``), the value is checked against the flag's action
(its ``type=``, ``choices=``, ``store_true`` -> a boolean, ``append`` -> a
list). Flags given on the command line win over the file.

Which file: ``--config PATH``, else ``$REMOTELER_AGENT_CONFIG``, else
``$CREDENTIALS_DIRECTORY/agent.toml`` (systemd ``LoadCredential=``), else
``/etc/remoteler/agent.toml`` when it exists. A file holding a join token must
not be readable by group or other (refused, like the hub's CA keys).
"""

from __future__ import annotations

import argparse
import os
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from remoteler.errors import ConfigError
from remoteler.fsutil import check_secret_file_mode

ENV_VAR = "REMOTELER_AGENT_CONFIG"
DEFAULT_PATH = Path("/etc/remoteler/agent.toml")
CREDENTIAL_NAME = "agent.toml"
#: start options that make no sense in the file itself
NOT_IN_FILE = frozenset({"help", "config"})
#: keys whose value is a secret: the file must then be 0600 (or stricter)
SECRET_KEYS = frozenset({"token"})


def subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    """The sub-command parser ``name`` of ``parser`` (e.g. ``start``)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found = action.choices.get(name)
            if isinstance(found, argparse.ArgumentParser):
                return found
    raise KeyError(name)


def config_key(action: argparse.Action) -> str | None:
    """The file key of an option (its first long flag without ``--``), or None."""
    longs = [s for s in action.option_strings if s.startswith("--")]
    if not longs or action.dest in NOT_IN_FILE:
        return None
    return longs[0][2:]


def options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Every option of ``parser`` that the file can set, by key."""
    out: dict[str, argparse.Action] = {}
    for action in parser._actions:
        key = config_key(action)
        if key is not None:
            out[key] = action
    return out


def supported(action: argparse.Action) -> bool:
    """True if :func:`convert` knows how to check a value for this action's kind."""
    return isinstance(
        action,
        argparse._StoreAction
        | argparse._StoreTrueAction
        | argparse._StoreFalseAction
        | argparse._AppendAction
        | argparse._CountAction
        | argparse.BooleanOptionalAction,
    )


def _toml_type(value: object) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    names |= {list: "an array", dict: "a table"}
    return names.get(type(value), type(value).__name__)


def _scalar(key: str, action: argparse.Action, value: object) -> Any:
    kind = action.type
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{key!r} must be an integer, not {_toml_type(value)}")
        out: Any = value
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{key!r} must be a number, not {_toml_type(value)}")
        out = float(value)
    else:
        if not isinstance(value, str):
            raise ValueError(f"{key!r} must be a string, not {_toml_type(value)}")
        out = value
        if callable(kind):
            try:
                out = kind(value)
            except (ValueError, TypeError, argparse.ArgumentTypeError) as err:
                raise ValueError(f"{key!r}: {err}") from None
    if action.choices is not None and out not in action.choices:
        allowed = ", ".join(repr(c) for c in action.choices)
        raise ValueError(f"{key!r} must be one of {allowed}, not {value!r}")
    return out


def convert(key: str, action: argparse.Action, value: object) -> Any:
    """The namespace value for ``value`` read from the file; ValueError if it does not fit."""
    if isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction):
        if not isinstance(value, bool):
            raise ValueError(f"{key!r} must be true or false, not {_toml_type(value)}")
        return action.const if value else action.default
    if isinstance(action, argparse.BooleanOptionalAction):
        if not isinstance(value, bool):
            raise ValueError(f"{key!r} must be true or false, not {_toml_type(value)}")
        return value
    if isinstance(action, argparse._CountAction):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{key!r} must be a count (an integer >= 0)")
        return value
    many = (
        isinstance(action, argparse._AppendAction)
        or action.nargs in ("*", "+")
        or (isinstance(action.nargs, int))
    )
    if many:
        if not isinstance(value, list):
            raise ValueError(f"{key!r} must be an array, not {_toml_type(value)}")
        items = [_scalar(key, action, v) for v in value]
        if isinstance(action.nargs, int) and len(items) != action.nargs:
            raise ValueError(f"{key!r} must have {action.nargs} items")
        return items
    if not isinstance(action, argparse._StoreAction):
        raise ValueError(f"{key!r} cannot be set from a file")
    return _scalar(key, action, value)


def _check_mode(path: Path, data: Mapping[str, object]) -> None:
    secrets = sorted(SECRET_KEYS & data.keys())
    if secrets:
        check_secret_file_mode(path, ConfigError, f"{path} (it holds the {secrets[0]})")


def load(path: Path, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """Read ``path`` and return ``{dest: value}`` for ``parser``'s options.

    Raises :class:`ConfigError` (one line naming the file and the key) for a
    missing or unparsable file, an unknown key, a value of the wrong type, or a
    file holding a token that others can read.
    """
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist; create it or fix --config") from None
    except PermissionError:
        raise ConfigError(
            f"cannot read config file {path} (permission denied); check its owner"
        ) from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config file {path} is not valid TOML: {err}") from None
    known = options(parser)
    out: dict[str, Any] = {}
    for key, value in data.items():
        action = known.get(key)
        if action is None:
            hint = key.replace("_", "-")
            more = f"; did you mean {hint!r}?" if hint in known else ""
            raise ConfigError(
                f"unknown key {key!r} in {path}{more} "
                "(keys are the 'edge-agent start' flags without '--')"
            )
        try:
            out[action.dest] = convert(key, action, value)
        except ValueError as err:
            raise ConfigError(f"{path}: {err}") from None
    _check_mode(path, data)
    return out


def resolve_path(explicit: str | None, environ: Mapping[str, str]) -> Path | None:
    """The config file to read, or None when there is none (see the module docstring)."""
    if explicit:
        return Path(explicit)
    if environ.get(ENV_VAR):
        return Path(environ[ENV_VAR])
    creds = environ.get("CREDENTIALS_DIRECTORY")
    if creds and (Path(creds) / CREDENTIAL_NAME).is_file():
        return Path(creds) / CREDENTIAL_NAME
    return DEFAULT_PATH if DEFAULT_PATH.is_file() else None


def explicit_dests(
    parser: argparse.ArgumentParser, sub: argparse.ArgumentParser, argv: Sequence[str]
) -> set[str]:
    """The destinations ``argv`` sets itself on ``sub`` (defaults suppressed for a moment)."""
    saved = [(action, action.default) for action in sub._actions]
    try:
        for action, _ in saved:
            action.default = argparse.SUPPRESS
        given = vars(parser.parse_args(list(argv)))
    finally:
        for action, default in saved:
            action.default = default
    return set(given)


def apply(
    parser: argparse.ArgumentParser,
    sub: argparse.ArgumentParser,
    argv: Sequence[str],
    args: argparse.Namespace,
    environ: Mapping[str, str] | None = None,
) -> argparse.Namespace:
    """``args`` with the config file's values wherever ``argv`` did not set the flag."""
    path = resolve_path(getattr(args, "config", None), os.environ if environ is None else environ)
    if path is None:
        return args
    values = load(path, sub)
    given = explicit_dests(parser, sub, argv)
    for dest, value in values.items():
        if dest not in given:
            setattr(args, dest, value)
    args.config = str(path)
    return args
