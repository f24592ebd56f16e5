"""Role-based access decisions, shared by the hub (routing) and the device (SSH auth).

A role allows a set of logins on the nodes whose labels match its selector. The
hub resolves a user's roles into :class:`AccessRule` values (templates such as
``{{internal.logins}}`` expanded) and signs them into the user certificate, so a
device decides on its own, offline, from the certificate alone.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

LOGINS_TRAIT = "{{internal.logins}}"
DEFAULT_MAX_TTL = 12 * 3600
RULES_EXTENSION = "remoteler-rules@remoteler"
ROLES_EXTENSION = "remoteler-roles@remoteler"


@dataclass(frozen=True)
class Role:
    """A named set of permissions, as stored by the hub."""

    name: str
    #: Logins this role allows; may contain ``{{internal.logins}}``.
    logins: tuple[str, ...] = ()
    #: Label key -> allowed values (glob patterns); ``{"*": ("*",)}`` matches every node.
    node_labels: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: Longest certificate lifetime this role grants, in seconds.
    max_session_ttl: int = DEFAULT_MAX_TTL

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "logins": list(self.logins),
            "node_labels": {k: list(v) for k, v in self.node_labels.items()},
            "max_session_ttl": self.max_session_ttl,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Role:
        labels = data.get("node_labels") or {}
        return cls(
            name=str(data["name"]),
            logins=tuple(str(x) for x in data.get("logins") or ()),
            node_labels={
                str(k): tuple(str(x) for x in (v if isinstance(v, list) else [v]))
                for k, v in labels.items()
            },
            max_session_ttl=int(data.get("max_session_ttl") or DEFAULT_MAX_TTL),
        )


#: Preset role, as Teleport's ``access``: every node, with the user's own logins.
ACCESS_ROLE = Role(name="access", logins=(LOGINS_TRAIT,), node_labels={"*": ("*",)})
PRESET_ROLES = (ACCESS_ROLE,)


@dataclass(frozen=True)
class AccessRule:
    """A role with templates expanded: what a certificate carries to the device."""

    role: str
    logins: tuple[str, ...]
    node_labels: Mapping[str, tuple[str, ...]]


def resolve_rules(roles: Iterable[Role], user_logins: Sequence[str]) -> list[AccessRule]:
    rules = []
    for role in roles:
        logins: list[str] = []
        for login in role.logins:
            expanded = list(user_logins) if login == LOGINS_TRAIT else [login]
            logins.extend(x for x in expanded if x and x not in logins)
        rules.append(AccessRule(role.name, tuple(logins), dict(role.node_labels)))
    return rules


def allowed_logins(rules: Iterable[AccessRule]) -> list[str]:
    out: list[str] = []
    for rule in rules:
        out.extend(x for x in rule.logins if x not in out)
    return out


def labels_match(selector: Mapping[str, tuple[str, ...]], labels: Mapping[str, str]) -> bool:
    """True when every key of the selector matches (``*``: any key / any value)."""
    if not selector:
        return False
    for key, patterns in selector.items():
        if key == "*":
            if "*" in patterns:
                continue
            return False
        value = labels.get(key)
        if value is None or not any(fnmatch.fnmatchcase(value, p) for p in patterns):
            return False
    return True


def check_access(
    rules: Iterable[AccessRule], login: str, labels: Mapping[str, str], *, node: str, user: str
) -> str | None:
    """None when some rule allows ``login`` on a node with ``labels``; else the reason."""
    rules = list(rules)
    login_ok = [r for r in rules if login in r.logins]
    if not login_ok:
        allowed = ", ".join(allowed_logins(rules)) or "none"
        return (
            f"access denied: login {login!r} is not allowed for user {user!r} "
            f"(allowed logins: {allowed}); ask an admin to add it to your roles"
        )
    if any(labels_match(r.node_labels, labels) for r in login_ok):
        return None
    shown = ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "no labels"
    return (
        f"access denied: node {node!r} ({shown}) matches no role of user {user!r} "
        f"that allows login {login!r}"
    )


def encode_rules(rules: Iterable[AccessRule]) -> str:
    """Compact JSON for the certificate extension."""
    return json.dumps(
        [
            {"r": r.role, "l": list(r.logins), "n": {k: list(v) for k, v in r.node_labels.items()}}
            for r in rules
        ],
        separators=(",", ":"),
        sort_keys=True,
    )


def _patterns(value: object) -> list[object]:
    if not isinstance(value, list):
        raise ValueError("label patterns must be a list")  # never widen access silently
    return value


def decode_rules(text: str) -> list[AccessRule]:
    """Parse :func:`encode_rules` output; raise ValueError on anything else."""
    data = json.loads(text)
    if not isinstance(data, list):
        raise ValueError("rules must be a list")
    rules = []
    for item in data:
        if not isinstance(item, dict):
            raise ValueError("rule must be an object")
        logins = item.get("l", [])
        labels = item.get("n", {})
        if not isinstance(logins, list) or not isinstance(labels, dict):
            raise ValueError("bad rule")
        rules.append(
            AccessRule(
                str(item.get("r", "")),
                tuple(str(x) for x in logins),
                {str(k): tuple(str(x) for x in _patterns(v)) for k, v in labels.items()},
            )
        )
    return rules
