from __future__ import annotations

import pytest

from remoteler.access import (
    ACCESS_ROLE,
    Role,
    check_access,
    decode_rules,
    encode_rules,
    labels_match,
    resolve_rules,
)


def test_preset_access_role_allows_own_logins_everywhere() -> None:
    rules = resolve_rules([ACCESS_ROLE], ["pi", "ubuntu"])
    assert rules[0].logins == ("pi", "ubuntu")
    assert check_access(rules, "pi", {"env": "prod"}, node="n", user="u") is None
    assert check_access(rules, "pi", {}, node="n", user="u") is None


def test_login_not_allowed_names_login_and_allowed_set() -> None:
    rules = resolve_rules([ACCESS_ROLE], ["pi"])
    reason = check_access(rules, "root", {}, node="n", user="alice")
    assert reason is not None
    assert "'root'" in reason and "pi" in reason and "alice" in reason


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ({"env": ("prod",)}, {"env": "prod"}, True),
        ({"env": ("prod",)}, {"env": "lab"}, False),
        ({"env": ("prod",)}, {}, False),
        ({"env": ("prod*",)}, {"env": "production"}, True),
        ({"env": ("lab", "prod")}, {"env": "lab"}, True),
        ({"env": ("prod",), "site": ("*",)}, {"env": "prod"}, False),
        ({"env": ("prod",), "site": ("*",)}, {"env": "prod", "site": "b"}, True),
        ({"*": ("*",)}, {}, True),
        ({"*": ("prod",)}, {"env": "prod"}, False),
        ({}, {"env": "prod"}, False),
    ],
)
def test_labels_match(
    selector: dict[str, tuple[str, ...]], labels: dict[str, str], expected: bool
) -> None:
    assert labels_match(selector, labels) is expected


def test_login_and_labels_must_come_from_the_same_role() -> None:
    roles = [
        Role("lab", logins=("pi",), node_labels={"env": ("lab",)}),
        Role("prod", logins=("root",), node_labels={"env": ("prod",)}),
    ]
    rules = resolve_rules(roles, [])
    assert check_access(rules, "pi", {"env": "lab"}, node="n", user="u") is None
    assert check_access(rules, "root", {"env": "prod"}, node="n", user="u") is None
    assert check_access(rules, "root", {"env": "lab"}, node="n", user="u") is not None


def test_rules_roundtrip_and_reject_garbage() -> None:
    rules = resolve_rules([ACCESS_ROLE, Role("x", ("a",), {"k": ("v*",)})], ["pi"])
    assert decode_rules(encode_rules(rules)) == rules
    for bad in ("{}", "[1]", '[{"l": "pi"}]', "not json"):
        with pytest.raises(ValueError):
            decode_rules(bad)


def test_role_dict_roundtrip() -> None:
    role = Role("r", ("pi",), {"env": ("a", "b")}, 3600)
    assert Role.from_dict(role.to_dict()) == role


def test_a_selector_that_is_not_a_list_is_refused_not_dropped() -> None:
    with pytest.raises(ValueError):
        decode_rules('[{"r": "x", "l": ["pi"], "n": {"env": "prod", "site": ["*"]}}]')
