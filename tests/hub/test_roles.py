"""Role documents (TOML): what parses, and the one-line UsageError for what does not."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from hub.roles import load_role_file, parse_role
from remoteler.access import Role
from remoteler.errors import UsageError

EXAMPLE = """
kind = "role"
name = "lab-operator"
logins = ["{{internal.logins}}", "pi"]
max_session_ttl = "8h"

[node_labels]
env = ["lab", "staging-*"]
site = "berlin"
"""


def _doc(**overrides: Any) -> dict[str, Any]:
    doc = tomllib.loads(EXAMPLE)
    for key, value in overrides.items():
        if value is None:
            doc.pop(key, None)
        else:
            doc[key] = value
    return doc


def test_example_file_parses(tmp_path: Path) -> None:
    path = tmp_path / "lab.toml"
    path.write_text(EXAMPLE)
    assert load_role_file(path) == Role(
        name="lab-operator",
        logins=("{{internal.logins}}", "pi"),
        node_labels={"env": ("lab", "staging-*"), "site": ("berlin",)},
        max_session_ttl=8 * 3600,
    )


@pytest.mark.parametrize(
    ("ttl", "seconds"), [("90s", 90), ("15m", 900), ("2d", 172800), (3600, 3600), (None, 43200)]
)
def test_ttl_forms(ttl: Any, seconds: int) -> None:
    assert parse_role(_doc(max_session_ttl=ttl)).max_session_ttl == seconds


def test_minimal_role_defaults() -> None:
    role = parse_role({"kind": "role", "name": "empty"})
    assert role == Role(name="empty")


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"kind": None}, 'kind = "role"'),
        ({"kind": "user"}, 'kind = "role"'),
        ({"kind": ["role"]}, 'kind = "role"'),
        ({"name": None}, "needs a name"),
        ({"name": 5}, "needs a name"),
        ({"name": "has space"}, "bad role name"),
        ({"name": "x" * 64}, "bad role name"),
        ({"logins": "pi"}, "logins must be a list of strings"),
        ({"logins": ["pi", 3]}, "logins must be a list of strings"),
        ({"logins": [["pi"]]}, "logins must be a list of strings"),
        ({"logins": ["{{internal.login}}"]}, "bad login '{{internal.login}}'"),
        ({"logins": ["root; rm -rf /"]}, "bad login"),
        ({"node_labels": ["env=lab"]}, "[node_labels] must be a table"),
        ({"node_labels": "env"}, "[node_labels] must be a table"),
        ({"node_labels": {"env": 1}}, "node_labels.env must be a string or a list"),
        ({"node_labels": {"env": ["lab", 2]}}, "node_labels.env must be a string or a list"),
        ({"node_labels": {"env": {"a": "b"}}}, "node_labels.env must be a string or a list"),
        ({"max_session_ttl": "0"}, "bad duration"),
        ({"max_session_ttl": "-5m"}, "bad duration"),
        ({"max_session_ttl": "8 hours"}, "bad duration"),
        ({"max_session_ttl": "1.5h"}, "bad duration"),
        ({"max_session_ttl": 1.5}, "bad duration"),
        ({"max_session_ttl": True}, "bad duration"),
        ({"max_session_ttl": 0}, "bad duration"),
        ({"max_session_ttl": ["8h"]}, "bad duration"),
    ],
)
def test_bad_documents(overrides: dict[str, Any], needle: str) -> None:
    with pytest.raises(UsageError) as exc:
        parse_role(_doc(**overrides))
    message = str(exc.value)
    assert needle in message
    assert "\n" not in message and len(message) < 200


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot read"):
        load_role_file(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text('kind = "role"\nname = \n')
    with pytest.raises(UsageError, match="is not valid TOML"):
        load_role_file(bad)
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(UsageError, match="is not UTF-8"):
        load_role_file(binary)
    with pytest.raises(UsageError, match="cannot read"):
        load_role_file(tmp_path)
