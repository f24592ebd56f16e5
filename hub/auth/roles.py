"""Role documents: TOML files for ``tctl create -f``.

Example::

    kind = "role"
    name = "lab-operator"
    max_session_ttl = "8h"
    max_sessions = 10                 # default 32 open sessions per user
    disconnect_expired_cert = true    # default: true for certificates under 1h

    [allow]
    logins = ["{{internal.logins}}", "pi"]
    node_labels = { env = ["lab", "staging-*"], site = "^(berlin|paris)$" }
    # SSO users (docs/sso.md): traits from the identity provider's claims, e.g.
    # logins = ["{{external.logins}}"], node_labels = { team = "{{external.groups}}" }

    [deny]
    logins = ["root"]
    node_labels = { tier = "safety-critical" }

    [permissions]
    port_forwarding = true      # default true
    file_transfer = true        # default true
    serial_console = false      # default false
    firmware_push = false       # default false
    admin = false               # default false: true lets its users run tctl (docs/tctl.md)

Top-level ``logins`` and ``[node_labels]`` (the first format) still mean allow.
Every error is one line that names the key at fault.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from hub.auth.service import check_logins, check_name
from remoteler.access import (
    HUB_PERMISSIONS,
    LOGINS_TRAIT,
    PatternError,
    Permission,
    Role,
    check_selector,
    is_template,
)
from remoteler.addr import parse_ttl, valid_labels
from remoteler.errors import UsageError
from remoteler.roleopts import DEFAULT_MAX_SESSIONS, MAX_MAX_SESSIONS

KNOWN_KEYS = {
    "kind",
    "name",
    "logins",
    "node_labels",
    "max_session_ttl",
    "allow",
    "deny",
    "permissions",
    "max_sessions",
    "disconnect_expired_cert",
}
RULE_KEYS = {"logins", "node_labels"}
PERMISSIONS = [*(p.value for p in Permission), *HUB_PERMISSIONS]


def _logins(value: object, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        raise UsageError(f"{where} must be a list of strings")
    for login in value:
        if login.startswith("{{") and not is_template(login):
            raise UsageError(
                f"bad login {login!r} in {where}: use {{{{internal.logins}}}} or "
                "{{external.NAME}} (a claim of the user's identity provider, docs/sso.md)"
            )
        if not is_template(login):
            try:
                check_logins([login])
            except UsageError:
                raise UsageError(
                    f"bad login {login!r} in {where}: use an OS user name such as 'pi', "
                    f"or {LOGINS_TRAIT!r} for the user's own logins"
                ) from None
    return tuple(value)


def _labels(value: object, where: str) -> dict[str, tuple[str, ...]]:
    if not isinstance(value, dict):
        raise UsageError(f"[{where}] must be a table of key = [patterns]")
    selector: dict[str, tuple[str, ...]] = {}
    for key, patterns in value.items():
        values = patterns if isinstance(patterns, list) else [patterns]
        if not all(isinstance(v, str) for v in values):
            raise UsageError(f"{where}.{key} must be a string or a list of strings")
        if key == "*":
            if values != ["*"]:
                raise UsageError(f'{where}: the key "*" only takes "*" (every node)')
        elif not valid_labels({key: ""}):
            raise UsageError(f"bad label key {key!r} in {where}: use letters, digits, _ . - /")
        selector[str(key)] = tuple(values)
    try:
        check_selector(selector)
    except PatternError as exc:
        raise UsageError(f"bad pattern in {where}: {exc}") from None
    return selector


def _rule(doc: dict[str, Any], where: str) -> tuple[tuple[str, ...], dict[str, tuple[str, ...]]]:
    unknown = sorted(set(doc) - RULE_KEYS)
    if unknown:
        raise UsageError(f"unknown key {unknown[0]!r} in [{where}]; use logins or node_labels")
    prefix = f"{where}." if where else ""
    return (
        _logins(doc.get("logins", []), f"{prefix}logins"),
        _labels(doc.get("node_labels", {}), f"{prefix}node_labels"),
    )


def _permissions(value: object) -> dict[str, bool]:
    if not isinstance(value, dict):
        raise UsageError("[permissions] must be a table of name = true|false")
    out: dict[str, bool] = {}
    for key, flag in value.items():
        if key not in PERMISSIONS:
            raise UsageError(f"unknown permission {key!r}; use {', '.join(PERMISSIONS)}")
        if not isinstance(flag, bool):
            raise UsageError(f"permissions.{key} must be true or false")
        out[key] = flag
    return out


def _max_sessions(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_MAX_SESSIONS:
        raise UsageError(
            f"max_sessions must be a whole number from 1 to {MAX_MAX_SESSIONS} "
            f"(default {DEFAULT_MAX_SESSIONS})"
        )
    return value


def _disconnect(value: object) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise UsageError(
            "disconnect_expired_cert must be true or false "
            "(default: true for certificates shorter than 1h)"
        )
    return value


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
    top = {k: doc[k] for k in RULE_KEYS if k in doc}
    if "allow" in doc:
        if top:
            raise UsageError(
                "give logins and node_labels either at the top level or under [allow], not both"
            )
        if not isinstance(doc["allow"], dict):
            raise UsageError("[allow] must be a table with logins and node_labels")
        logins, node_labels = _rule(doc["allow"], "allow")
    else:
        logins, node_labels = _rule(top, "")
    deny = doc.get("deny", {})
    if not isinstance(deny, dict):
        raise UsageError("[deny] must be a table with logins and node_labels")
    deny_logins, deny_node_labels = _rule(deny, "deny")
    ttl = doc.get("max_session_ttl", "12h")
    seconds = parse_ttl(str(ttl))
    return Role(
        name=name,
        logins=logins,
        node_labels=node_labels,
        max_session_ttl=seconds,
        deny_logins=deny_logins,
        deny_node_labels=deny_node_labels,
        permissions=_permissions(doc.get("permissions", {})),
        max_sessions=_max_sessions(doc.get("max_sessions")),
        disconnect_expired_cert=_disconnect(doc.get("disconnect_expired_cert")),
    )


def load_role_file(path: Path) -> Role:
    try:
        body = path.read_text(encoding="utf-8")  # TOML is UTF-8
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path} is not UTF-8 text; save it as UTF-8 TOML") from None
    return load_role_text(body, str(path))


def load_role_text(body: str, name: str) -> Role:
    """A role document's text (``tctl create`` sends it to the hub); ``name`` is its file."""
    try:
        doc = tomllib.loads(body)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{name} is not valid TOML: {exc}") from None
    return parse_role(doc)
