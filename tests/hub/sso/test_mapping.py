"""Roles and traits from an identity provider's claims (hub/sso/mapping.py)."""

from __future__ import annotations

import pytest

from hub.sso.mapping import (
    MAX_CLAIMS,
    MAX_VALUES,
    MapRule,
    flatten_claims,
    map_roles,
    parse_rules,
    roles_or_refuse,
)
from hub.sso.provider import SSOError
from remoteler.errors import UsageError

RULES = (
    MapRule("groups", "ops", ("access",)),
    MapRule("groups", "admins-*", ("editor", "access")),
    MapRule("email", "^.*@example\\.com$", ("staff",)),
)


def test_rules_map_literal_glob_and_regex_values_each_role_once() -> None:
    claims = {"groups": ("ops", "admins-eu"), "email": ("a@example.com",)}
    assert map_roles(RULES, claims) == ["access", "editor", "staff"]
    assert map_roles(RULES, {"groups": ("dev",), "email": ("a@example.org",)}) == []
    # a regex is anchored: no partial match
    assert map_roles(RULES, {"email": ("a@example.com.evil",)}) == []


def test_a_user_no_rule_maps_is_refused_with_the_values_seen() -> None:
    with pytest.raises(SSOError) as err:
        roles_or_refuse("bob", "corp", RULES, {"groups": ("dev", "qa"), "name": ("Bob",)})
    text = str(err.value)
    assert "no role is mapped for 'bob' by connector 'corp'" in text
    assert "groups: 'dev', 'qa'" in text
    assert "email: none" in text
    assert "\n" not in text


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"claim": "groups"}, "claims_to_roles must be a list"),
        ([{"claim": "groups", "value": "ops"}], "roles must be a non-empty list"),
        ([{"claim": "", "value": "ops", "roles": ["a"]}], "claim must name a claim"),
        ([{"claim": "g", "value": "", "roles": ["a"]}], "value must be a value or pattern"),
        ([{"claim": "g", "value": "^(a+)+$", "roles": ["a"]}], "bad pattern"),
        ([{"claim": "g", "value": "x", "roles": ["a"], "extra": 1}], "unknown key 'extra'"),
        (["ops"], "must be a table"),
    ],
)
def test_bad_rules_are_one_line_errors_naming_the_key(value: object, message: str) -> None:
    with pytest.raises(UsageError) as err:
        parse_rules(value, "claims_to_roles")
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_saml_rules_use_name_for_the_attribute() -> None:
    rules = parse_rules(
        [{"name": "Role", "value": "ops", "roles": ["access"]}], "attributes_to_roles", "name"
    )
    assert rules == (MapRule("Role", "ops", ("access",)),)


def test_claims_are_flattened_to_strings_and_capped() -> None:
    raw = {
        "groups": ["ops", "ops", "dev"],
        "admin": True,
        "level": 3,
        "address": {"street": "x"},
        "long": "x" * 1000,
        "many": [str(i) for i in range(MAX_VALUES + 50)],
        **{f"c{i}": "v" for i in range(MAX_CLAIMS * 2)},
    }
    flat = flatten_claims(raw)
    assert flat["groups"] == ("ops", "dev")
    assert flat["admin"] == ("true",)
    assert flat["level"] == ("3",)
    assert "address" not in flat and "long" not in flat
    assert len(flat["many"]) == MAX_VALUES
    assert len(flat) == MAX_CLAIMS
