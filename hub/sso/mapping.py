"""Roles and traits from what the identity provider says (sans-I/O).

A connector maps claims (OIDC), attributes (SAML) or teams (GitHub) to roles with
rules of ``(claim, value pattern, roles)``. A pattern is the label patterns' syntax
(remoteler/access.py): literal, ``*`` globs, or ``^...$`` regexes. Every claim also
becomes a trait, ``{{external.NAME}}`` in role templates. A user no rule maps is
refused with the values the provider sent for the claims the rules look at, so the
admin can see which mapping is missing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hub.sso.provider import SSOError
from remoteler.access import PatternError, compile_pattern
from remoteler.errors import UsageError

#: caps on what a provider's answer may put into a user record
MAX_CLAIMS = 64
MAX_VALUES = 256
MAX_VALUE_CHARS = 256


@dataclass(frozen=True)
class MapRule:
    claim: str
    value: str
    roles: tuple[str, ...]


def parse_rules(value: object, key: str, claim_key: str = "claim") -> tuple[MapRule, ...]:
    """``[{claim = "groups", value = "ops", roles = ["access"]}, ...]`` (``claim_key``:
    ``name`` for SAML's ``attributes_to_roles``)."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise UsageError(f"{key} must be a list of {{ {claim_key}, value, roles }} tables")
    rules = []
    for i, item in enumerate(value):
        where = f"{key}[{i}]"
        if not isinstance(item, dict):
            raise UsageError(f"{where} must be a table {{ {claim_key}, value, roles }}")
        unknown = sorted(set(item) - {claim_key, "value", "roles"})
        if unknown:
            raise UsageError(
                f"unknown key {unknown[0]!r} in {where}; use {claim_key}, value, roles"
            )
        claim, pattern, roles = item.get(claim_key), item.get("value"), item.get("roles")
        if not isinstance(claim, str) or not claim:
            raise UsageError(f'{where}.{claim_key} must name a claim, such as "groups"')
        if not isinstance(pattern, str) or not pattern:
            raise UsageError(f'{where}.value must be a value or pattern, such as "ops"')
        try:
            compile_pattern(pattern)
        except PatternError as exc:
            raise UsageError(f"bad pattern in {where}.value: {exc}") from None
        if (
            not isinstance(roles, list)
            or not roles
            or not all(isinstance(r, str) and r for r in roles)
        ):
            raise UsageError(f"{where}.roles must be a non-empty list of role names")
        rules.append(MapRule(claim, pattern, tuple(roles)))
    return tuple(rules)


def flatten_claims(raw: Mapping[str, Any]) -> dict[str, tuple[str, ...]]:
    """Claims as tuples of strings: lists flattened, numbers and booleans as text,
    objects left out; capped (:data:`MAX_CLAIMS`, :data:`MAX_VALUES`, :data:`MAX_VALUE_CHARS`)."""
    out: dict[str, tuple[str, ...]] = {}
    for name, value in raw.items():
        if len(out) >= MAX_CLAIMS:
            break
        if not isinstance(name, str) or not name or len(name) > 64:
            continue
        items = value if isinstance(value, list | tuple) else [value]
        values: list[str] = []
        for item in items:
            if isinstance(item, bool):
                text = "true" if item else "false"
            elif isinstance(item, str | int | float):
                text = str(item)
            else:
                continue
            if len(text) <= MAX_VALUE_CHARS and text not in values:
                values.append(text)
            if len(values) >= MAX_VALUES:
                break
        if values:
            out[name] = tuple(values)
    return out


def map_roles(rules: Sequence[MapRule], claims: Mapping[str, Sequence[str]]) -> list[str]:
    """The roles the rules give for ``claims``, in rule order, each once."""
    roles: list[str] = []
    for rule in rules:
        match = compile_pattern(rule.value)
        if any(match(v) for v in claims.get(rule.claim, ())):
            roles.extend(r for r in rule.roles if r not in roles)
    return roles


def no_role_message(
    user: str, connector: str, rules: Sequence[MapRule], claims: Mapping[str, Sequence[str]]
) -> str:
    seen = []
    for claim in dict.fromkeys(r.claim for r in rules):
        values = list(claims.get(claim, ()))
        shown = ", ".join(repr(v) for v in values[:10]) + (" ..." if len(values) > 10 else "")
        seen.append(f"{claim}: {shown or 'none'}")
    return (
        f"no role is mapped for {user!r} by connector {connector!r}: the identity provider "
        f"sent {'; '.join(seen) or 'no claims the connector maps'}; ask an admin to map one "
        "of these values to a role"
    )


class NoRoleMapped(SSOError):
    """No rule maps the user. The message (for the user) names the values the provider
    sent; :attr:`log_reason` (for the log and the audit) only the claims' names."""

    def __init__(self, message: str, log_reason: str) -> None:
        super().__init__(message)
        self.log_reason = log_reason


def roles_or_refuse(
    user: str, connector: str, rules: Sequence[MapRule], claims: Mapping[str, Sequence[str]]
) -> list[str]:
    roles = map_roles(rules, claims)
    if not roles:
        names = ", ".join(dict.fromkeys(r.claim for r in rules))
        raise NoRoleMapped(
            no_role_message(user, connector, rules, claims),
            f"no role is mapped by connector {connector!r} (claims looked at: {names})",
        )
    return roles
