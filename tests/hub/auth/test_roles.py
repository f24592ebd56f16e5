"""Role documents (TOML): what parses, the one-line UsageError for what does not, the TTL
the roles give, and tctl create/get/rm with their audit events."""

from __future__ import annotations

import asyncio
import json
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import Cluster, free_port

from hub.auth.roles import load_role_file, parse_role
from hub.auth.service import AuthService
from hub.storage.api import AuditQuery, User
from hub.storage.sqlite.audit import SQLiteAuditLog
from remoteler.access import RULES_EXTENSION, Role, decode_rules
from remoteler.ca import (
    generate_private_key,
    parse_certificate,
    public_key_to_openssh,
)
from remoteler.errors import UsageError
from tctl import cli as tctl

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


# -- allow, deny, regex, permissions --------------------------------------------------

FULL = """
kind = "role"
name = "field-tech"
max_session_ttl = "4h"

[allow]
logins = ["{{internal.logins}}", "pi"]
node_labels = { env = ["lab", "^staging-[0-9]+$"], "*" = "*" }

[deny]
logins = ["root"]

[deny.node_labels]
tier = "^safety-.*$"

[permissions]
serial_console = true
port_forwarding = false
"""


def test_full_document_parses() -> None:
    role = parse_role(tomllib.loads(FULL))
    assert role == Role(
        name="field-tech",
        logins=("{{internal.logins}}", "pi"),
        node_labels={"env": ("lab", "^staging-[0-9]+$"), "*": ("*",)},
        max_session_ttl=4 * 3600,
        deny_logins=("root",),
        deny_node_labels={"tier": ("^safety-.*$",)},
        permissions={"serial_console": True, "port_forwarding": False},
    )
    assert Role.from_dict(role.to_dict()) == role
    assert role.grants() == {"serial_console", "file_transfer"}
    assert role.vetoes() == {"port_forwarding"}


def test_a_role_stored_before_deny_existed_still_loads() -> None:
    old = {"name": "r", "logins": ["pi"], "node_labels": {"env": ["lab"]}, "max_session_ttl": 60}
    assert Role.from_dict(old) == Role("r", ("pi",), {"env": ("lab",)}, 60)


@pytest.mark.parametrize(
    ("doc", "needle"),
    [
        (
            {"allow": {"logins": ["pi"]}, "logins": ["pi"]},
            "either at the top level or under [allow]",
        ),
        ({"allow": "pi"}, "[allow] must be a table"),
        ({"allow": {"login": ["pi"]}}, "unknown key 'login' in [allow]"),
        ({"deny": ["root"]}, "[deny] must be a table"),
        ({"deny": {"logins": "root"}}, "deny.logins must be a list of strings"),
        ({"deny": {"logins": ["bad login"]}}, "bad login 'bad login' in deny.logins"),
        ({"deny": {"node_labels": {"env": 3}}}, "deny.node_labels.env must be a string"),
        ({"deny": {"node_labels": {"bad key!": "x"}}}, "bad label key 'bad key!'"),
        ({"node_labels": {"*": "prod"}}, 'the key "*" only takes "*"'),
        ({"deny": {"node_labels": {"env": "^(a+)+$"}}}, "bad pattern in deny.node_labels"),
        ({"allow": {"node_labels": {"env": "^[a-$"}}}, "invalid regex"),
        ({"allow": {"node_labels": {"env": "^(x|xy)*$"}}}, "alternation under a quantifier"),
        ({"allow": {"node_labels": {"env": "^(a)\\1$"}}}, "backreferences"),
        ({"permissions": {"ssh_file_copy": True}}, "unknown permission 'ssh_file_copy'"),
        ({"permissions": {"serial_console": "yes"}}, "permissions.serial_console must be true"),
        ({"permissions": ["serial_console"]}, "[permissions] must be a table"),
    ],
)
def test_bad_rules_give_one_line(doc: dict[str, Any], needle: str) -> None:
    base = {"kind": "role", "name": "r"}
    with pytest.raises(UsageError) as exc:
        parse_role({**base, **doc})
    message = str(exc.value)
    assert needle in message, message
    assert "\n" not in message and len(message) < 300


# -- TTL from the roles ---------------------------------------------------------------


async def _issue(auth: AuthService, roles: list[str], ttl: int | None) -> tuple[int, Any]:
    user = User("alice", tuple(roles), ("pi",), None, None, 0, 0.0)
    pub = public_key_to_openssh(generate_private_key().public_key())
    before = int(auth.clock())  # the fixture's clock stands still
    issued = await auth.issue_user_certs(user, pub, ttl)
    cert = parse_certificate(issued.ssh_cert)
    assert cert.valid_before == issued.expires
    return issued.expires - before, cert


@pytest.mark.parametrize(
    ("ttls", "asked", "expected"),
    [
        ([], None, 12 * 3600),  # the access role alone: the 12 h default
        ([], 3600, 3600),
        ([], 48 * 3600, 12 * 3600),  # --ttl cannot go past the access role's 12 h
        ([30 * 3600], 24 * 3600, 12 * 3600),  # nor past the smallest of several roles
        ([600, 3600], None, 600),
        ([600, 3600], 3600, 600),
        ([600], 60, 60),
    ],
)
async def test_ttl_is_capped_by_the_smallest_max_session_ttl(
    auth: AuthService, ttls: list[int], asked: int | None, expected: int
) -> None:
    roles = ["access"]
    for i, ttl in enumerate(ttls):
        await auth.storage.roles.put(Role(f"r{i}", ("pi",), {"*": ("*",)}, ttl))
        roles.append(f"r{i}")
    got, _ = await _issue(auth, roles, asked)
    assert got == expected


async def test_a_role_above_12h_allows_a_longer_ttl_only_alone(auth: AuthService) -> None:
    await auth.storage.roles.put(Role("ci", ("pi",), {"*": ("*",)}, 30 * 3600))
    got, _ = await _issue(auth, ["ci"], 24 * 3600)
    assert got == 24 * 3600
    got, _ = await _issue(auth, ["ci"], None)
    assert got == 12 * 3600  # the default stays 12 h


async def test_certificate_carries_deny_and_drops_permit_port_forwarding(
    auth: AuthService,
) -> None:
    await auth.storage.roles.put(
        Role("no-fwd", deny_logins=("root",), permissions={"port_forwarding": False})
    )
    _, cert = await _issue(auth, ["access"], None)
    assert "permit-port-forwarding" in cert.extensions
    _, cert = await _issue(auth, ["access", "no-fwd"], None)
    assert "permit-port-forwarding" not in cert.extensions
    rules = decode_rules(cert.extensions[RULES_EXTENSION])
    assert [r.role for r in rules] == ["access", "no-fwd"]
    assert rules[1].deny_logins == ("root",) and rules[1].vetoes == {"port_forwarding"}


# -- tctl create / get / rm, audited -------------------------------------------------


def _tctl(path: Path, *argv: str) -> int:
    return tctl.main(["--data-dir", str(path), *argv])


@pytest.fixture(scope="module")
def hub_data(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A running hub's data dir, shared: tctl reaches the hub through it."""
    cluster = Cluster(tmp_path_factory.mktemp("roles"), free_port())
    cluster.start_hub()
    try:
        yield cluster.data
    finally:
        cluster.stop()


def _role_events(path: Path) -> list[Any]:
    async def read() -> list[Any]:
        audit = await SQLiteAuditLog.open(path)  # beside the running hub's own handle
        try:
            return [
                e for e in await audit.search(AuditQuery(limit=100)) if e.type.startswith("role.")
            ]
        finally:
            await audit.close()

    return asyncio.run(read())


def test_tctl_create_get_rm_are_audited(
    hub_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = hub_data
    before = len(_role_events(data))
    doc = tmp_path / "role.toml"
    doc.write_text(FULL)
    assert _tctl(data, "create", "-f", str(doc)) == 0
    assert "Role 'field-tech' created." in capsys.readouterr().out
    assert _tctl(data, "create", "-f", str(doc)) == 0
    assert "updated" in capsys.readouterr().out
    assert _tctl(data, "get", "roles", "--format", "json") == 0
    listed = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert listed["field-tech"]["deny_logins"] == ["root"]
    assert listed["field-tech"]["permissions"] == {"serial_console": True, "port_forwarding": False}
    assert _tctl(data, "get", "roles") == 0
    text = capsys.readouterr().out
    assert "Deny" in text and "tier=^safety-.*$" in text and "serial_console" in text
    assert _tctl(data, "rm", "role/field-tech") == 0
    assert _tctl(data, "rm", "role/field-tech") != 0
    assert "no role 'field-tech'" in capsys.readouterr().err
    events = _role_events(data)[before:]
    assert [(e.type, e.fields["name"]) for e in events] == [
        ("role.created", "field-tech"),
        ("role.created", "field-tech"),
        ("role.deleted", "field-tech"),
    ]
    assert events[0].fields["spec"]["deny_logins"] == ["root"]
    assert [e.fields["updated"] for e in events[:2]] == [False, True]
    assert all(e.fields["by"] == "tctl:@admin" for e in events)  # the hub's admin identity


def test_tctl_refuses_bad_regex_and_preset_removal(
    hub_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = hub_data
    before = _role_events(data)
    doc = tmp_path / "bad.toml"
    doc.write_text('kind = "role"\nname = "x"\n[deny.node_labels]\nenv = "^(a|aa)+$"\n')
    assert _tctl(data, "create", "-f", str(doc)) != 0
    err = capsys.readouterr().err
    assert err.startswith("tctl: bad pattern in deny.node_labels: env = '^(a|aa)+$'")
    assert err.count("\n") == 1
    assert _tctl(data, "rm", "role/access") != 0
    assert "preset" in capsys.readouterr().err
    assert _role_events(data) == before


def test_external_templates_parse_and_unknown_templates_are_refused() -> None:
    doc = {
        "kind": "role",
        "name": "sso",
        "allow": {
            "logins": ["{{external.logins}}", "{{internal.logins}}"],
            "node_labels": {"team": "{{external.groups}}"},
        },
    }
    role = parse_role(doc)
    assert role.logins == ("{{external.logins}}", "{{internal.logins}}")
    with pytest.raises(UsageError, match=r"bad login '\{\{email\}\}'.*external"):
        parse_role({**doc, "allow": {"logins": ["{{email}}"]}})
