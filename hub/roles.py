"""Role documents: TOML files for ``tctl create -f``.

Example::

    kind = "role"
    name = "lab-operator"
    logins = ["{{internal.logins}}", "pi"]
    max_session_ttl = "8h"

    [node_labels]
    env = ["lab", "staging-*"]     # glob patterns; "*" = any value
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from hub.auth import check_logins, check_name
from remoteler.access import LOGINS_TRAIT, Role
from remoteler.addr import parse_ttl
from remoteler.errors import UsageError

KNOWN_KEYS = {"kind", "name", "logins", "node_labels", "max_session_ttl"}


def parse_role(doc: dict[str, Any]) -> Role:
    if doc.get("kind") != "role":
        raise UsageError('the file must say kind = "role"')
    unknown = sorted(set(doc) - KNOWN_KEYS)
    if unknown:
        raise UsageError(
            f"unknown key {unknown[0]!r} in the role; use {', '.join(sorted(KNOWN_KEYS))}"
        )
    name = doc.get("name")
    if not isinstance(name, str):
        raise UsageError('the role needs a name = "..."')
    check_name("role", name)
    logins = doc.get("logins", [])
    if not isinstance(logins, list) or not all(isinstance(x, str) for x in logins):
        raise UsageError("logins must be a list of strings")
    for login in logins:
        if login != LOGINS_TRAIT:
            try:
                check_logins([login])
            except UsageError:
                raise UsageError(
                    f"bad login {login!r} in the role: use an OS user name such as 'pi', "
                    f"or {LOGINS_TRAIT!r} for the user's own logins"
                ) from None
    labels = doc.get("node_labels", {})
    if not isinstance(labels, dict):
        raise UsageError("[node_labels] must be a table of key = [patterns]")
    node_labels: dict[str, tuple[str, ...]] = {}
    for key, value in labels.items():
        values = value if isinstance(value, list) else [value]
        if not all(isinstance(v, str) for v in values):
            raise UsageError(f"node_labels.{key} must be a string or a list of strings")
        node_labels[str(key)] = tuple(values)
    ttl = doc.get("max_session_ttl", "12h")
    seconds = parse_ttl(str(ttl))
    return Role(name=name, logins=tuple(logins), node_labels=node_labels, max_session_ttl=seconds)


def load_role_file(path: Path) -> Role:
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))  # TOML is UTF-8
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path} is not UTF-8 text; save it as UTF-8 TOML") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path} is not valid TOML: {exc}") from None
    return parse_role(doc)
