"""Role-based access decisions, shared by the hub (routing) and the device (SSH auth).

A role allows a set of logins on the nodes whose labels match its selector, and
may deny logins and nodes; **deny wins over allow**, whichever role says it.
The hub resolves a user's roles into :class:`AccessRule` values (templates such
as ``{{internal.logins}}`` expanded) and signs them into the user certificate,
so a device decides on its own, offline, from the certificate alone.

Label values are matched exactly, as a glob where ``*`` is the only wildcard,
or, written ``^...$``, as a regular expression that must match the whole value
(Teleport's convention). Patterns are compiled once per process
(:func:`compile_pattern`); a regex that could backtrack badly is refused
(:class:`PatternError`), at ``tctl create`` and again when a certificate is read.

Call :func:`decide` (or :func:`permissions_for`) to learn both whether a login
is allowed on a node and what the session may do there (:class:`Permissions`).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the stubs know it by its old name; importing that one warns
    import sre_parse as _sre_parse
else:
    from re import _parser as _sre_parse

LOGINS_TRAIT = "{{internal.logins}}"
#: an OS login name (as hub/auth/service.py checks them): trait values that are not are dropped
_LOGIN_VALUE = re.compile(r"[a-z_][a-z0-9_.\-]{0,31}\$?", re.IGNORECASE | re.ASCII)
DEFAULT_MAX_TTL = 12 * 3600
RULES_EXTENSION = "remoteler-rules@remoteler"
ROLES_EXTENSION = "remoteler-roles@remoteler"
#: Version of the rules encoding in :data:`RULES_EXTENSION`. Version 1 (a bare
#: JSON list, allow rules only) is still read; an agent older than version 2
#: refuses a version-2 certificate as malformed, so deny rules are never ignored.
RULES_VERSION = 2

Selector = Mapping[str, tuple[str, ...]]


class Permission(StrEnum):
    """What a session may do besides a shell or a command."""

    PORT_FORWARDING = "port_forwarding"
    FILE_TRANSFER = "file_transfer"
    SERIAL_CONSOLE = "serial_console"
    FIRMWARE_PUSH = "firmware_push"


#: What a role grants when it does not say: Teleport's roles allow port
#: forwarding and file copy unless told otherwise; the device-only powers are opt-in.
DEFAULT_PERMISSIONS: Mapping[Permission, bool] = {
    Permission.PORT_FORWARDING: True,
    Permission.FILE_TRANSFER: True,
    Permission.SERIAL_CONSOLE: False,
    Permission.FIRMWARE_PUSH: False,
}
DEFAULT_GRANTS = frozenset(p.value for p, on in DEFAULT_PERMISSIONS.items() if on)


@dataclass(frozen=True)
class Permissions:
    """What one SSH session may do on one node; all False when access is refused."""

    port_forwarding: bool = False
    file_transfer: bool = False
    serial_console: bool = False
    firmware_push: bool = False

    def allows(self, permission: Permission | str) -> bool:
        """``Permissions.allows("serial_console")``; raises ValueError for an unknown name."""
        return bool(getattr(self, Permission(permission).value))

    @classmethod
    def of(cls, names: Iterable[str]) -> Permissions:
        """The permissions named in ``names``; unknown names are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{name: True for name in names if name in known})

    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in fields(self) if getattr(self, f.name))


NO_PERMISSIONS = Permissions()


# -- patterns -------------------------------------------------------------------

#: Longest label pattern accepted.
MAX_PATTERN = 256
#: Most quantifiers that can match a varying length (``*``, ``+``, ``?``,
#: ``{m,n}``) in one regex. Each one multiplies the worst-case backtracking by
#: the value's length (labels are at most 253 characters): three stay in the
#: tens of milliseconds, four already take seconds on a crafted label.
MAX_VARIABLE_REPEATS = 3


class PatternError(ValueError):
    """A label pattern that is invalid, or a regex that could backtrack badly."""


def is_regex(pattern: str) -> bool:
    """Teleport's convention: a value written ``^...$`` is a regular expression."""
    return len(pattern) >= 2 and pattern.startswith("^") and pattern.endswith("$")


_REPEATS = frozenset({"MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"})
_REFUSED = {
    "GROUPREF": "backreferences are not supported",
    "GROUPREF_EXISTS": "conditional groups are not supported",
    "ASSERT": "lookahead and lookbehind are not supported",
    "ASSERT_NOT": "lookahead and lookbehind are not supported",
}


def _check_tree(items: Any, counter: list[int]) -> tuple[bool, bool]:
    """Walk a parsed regex; return (has a variable repeat, has an alternation).

    Raise PatternError for constructs that backtrack exponentially: a repeat
    inside a repeat, or an alternation inside an unbounded repeat.
    """
    has_repeat = has_branch = False
    for op, av in items:
        name = getattr(op, "name", str(op))
        if name in _REFUSED:
            raise PatternError(_REFUSED[name])
        if name in _REPEATS:
            low, high, body = av
            variable = low != high
            if variable:
                counter[0] += 1
                if counter[0] > MAX_VARIABLE_REPEATS:
                    raise PatternError(
                        f"more than {MAX_VARIABLE_REPEATS} variable quantifiers (*, +, ?, {{m,n}})"
                    )
            inner_repeat, inner_branch = _check_tree(body, counter)
            if high > 1 and inner_repeat:
                raise PatternError("nested quantifiers such as (a+)+ can backtrack exponentially")
            if high > 1 and inner_branch:
                raise PatternError(
                    "an alternation under a quantifier such as (a|ab)* can backtrack "
                    "exponentially; use a character class or several patterns"
                )
            has_repeat = has_repeat or variable or inner_repeat
            has_branch = has_branch or inner_branch
        elif name == "BRANCH":
            has_branch = True
            for branch in av[1]:
                r, _ = _check_tree(branch, counter)
                has_repeat = has_repeat or r
        elif name == "SUBPATTERN":
            r, b = _check_tree(av[-1], counter)
            has_repeat, has_branch = has_repeat or r, has_branch or b
        elif name == "ATOMIC_GROUP":
            r, b = _check_tree(av, counter)
            has_repeat, has_branch = has_repeat or r, has_branch or b
    return has_repeat, has_branch


def _compile_regex(pattern: str) -> re.Pattern[str]:
    try:
        compiled = re.compile(pattern)
        tree = _sre_parse.parse(pattern)
    except (re.error, RecursionError, OverflowError) as exc:
        raise PatternError(f"invalid regex: {exc}") from None
    _check_tree(tree.data, [0])
    return compiled


def _glob_match(parts: tuple[str, ...], value: str) -> bool:
    """``*``-only glob, linear: prefix, suffix, then each middle part leftmost."""
    first, last = parts[0], parts[-1]
    if len(value) < len(first) + len(last):
        return False
    if not value.startswith(first) or not value.endswith(last):
        return False
    pos, end = len(first), len(value) - len(last)
    for part in parts[1:-1]:
        found = value.find(part, pos, end)
        if found < 0:
            return False
        pos = found + len(part)
    return True


@functools.lru_cache(maxsize=4096)
def compile_pattern(pattern: str) -> Callable[[str], bool]:
    """A matcher for one label pattern; raise PatternError if it is not acceptable.

    ``^...$`` is a regex matched against the whole value (``re.fullmatch``, so a
    trailing newline never slips through ``$``); otherwise ``*`` matches any
    run of characters and everything else is literal.
    """
    if len(pattern) > MAX_PATTERN:
        raise PatternError(f"longer than {MAX_PATTERN} characters")
    if is_regex(pattern):
        rx = _compile_regex(pattern)
        return lambda value: rx.fullmatch(value) is not None
    if "*" not in pattern:
        return lambda value: value == pattern
    return functools.partial(_glob_match, tuple(pattern.split("*")))


def check_selector(selector: Selector) -> None:
    """Compile every pattern of ``selector``; raise PatternError naming the bad one."""
    for key, patterns in selector.items():
        for pattern in patterns:
            try:
                compile_pattern(pattern)
            except PatternError as exc:
                raise PatternError(f"{key} = {pattern!r}: {exc}") from None


def labels_match(selector: Selector, labels: Mapping[str, str]) -> bool:
    """True when every key of the selector matches (``"*" = ["*"]``: any node).

    Several patterns for one key: any of them. An empty selector matches
    nothing. Raise PatternError for a pattern :func:`compile_pattern` refuses.
    """
    if not selector:
        return False
    for key, patterns in selector.items():
        if key == "*":
            if "*" in patterns:
                continue
            return False
        value = labels.get(key)
        if value is None or not any(compile_pattern(p)(value) for p in patterns):
            return False
    return True


# -- roles and rules ------------------------------------------------------------


def _selector_dict(selector: Selector) -> dict[str, list[str]]:
    return {k: list(v) for k, v in selector.items()}


def _selector_from(data: Any) -> dict[str, tuple[str, ...]]:
    return {
        str(k): tuple(str(x) for x in (v if isinstance(v, list) else [v]))
        for k, v in (data or {}).items()
    }


def _opt_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _opt_bool(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


@dataclass(frozen=True)
class Role:
    """A named set of permissions, as stored by the hub."""

    name: str
    #: Logins this role allows; may contain ``{{internal.logins}}``.
    logins: tuple[str, ...] = ()
    #: Label key -> allowed value patterns; ``{"*": ("*",)}`` matches every node.
    node_labels: Selector = field(default_factory=dict)
    #: Longest certificate lifetime this role grants, in seconds.
    max_session_ttl: int = DEFAULT_MAX_TTL
    #: Logins refused on every node, whatever any role allows.
    deny_logins: tuple[str, ...] = ()
    #: Nodes refused for every login, whatever any role allows.
    deny_node_labels: Selector = field(default_factory=dict)
    #: Permissions the role sets explicitly (others take :data:`DEFAULT_PERMISSIONS`).
    permissions: Mapping[str, bool] = field(default_factory=dict)
    #: Concurrent sessions per user; None: the default (:mod:`remoteler.roleopts`).
    max_sessions: int | None = None
    #: End sessions when the certificate expires; None: only for TTLs under 1 h.
    disconnect_expired_cert: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "logins": list(self.logins),
            "node_labels": _selector_dict(self.node_labels),
            "max_session_ttl": self.max_session_ttl,
            "deny_logins": list(self.deny_logins),
            "deny_node_labels": _selector_dict(self.deny_node_labels),
            "permissions": dict(self.permissions),
            "max_sessions": self.max_sessions,
            "disconnect_expired_cert": self.disconnect_expired_cert,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Role:
        return cls(
            name=str(data["name"]),
            logins=tuple(str(x) for x in data.get("logins") or ()),
            node_labels=_selector_from(data.get("node_labels")),
            max_session_ttl=int(data.get("max_session_ttl") or DEFAULT_MAX_TTL),
            deny_logins=tuple(str(x) for x in data.get("deny_logins") or ()),
            deny_node_labels=_selector_from(data.get("deny_node_labels")),
            permissions={str(k): bool(v) for k, v in (data.get("permissions") or {}).items()},
            max_sessions=_opt_int(data.get("max_sessions")),
            disconnect_expired_cert=_opt_bool(data.get("disconnect_expired_cert")),
        )

    def grants(self) -> frozenset[str]:
        """Permissions this role gives where it allows access (defaults filled in)."""
        return frozenset(
            p.value for p in Permission if self.permissions.get(p.value, DEFAULT_PERMISSIONS[p])
        )

    def vetoes(self) -> frozenset[str]:
        """Permissions this role sets to false: off on every node, as a deny rule."""
        return frozenset(
            k for k, v in self.permissions.items() if v is False and k not in HUB_PERMISSIONS
        )


#: Preset role, as Teleport's ``access``: every node, with the user's own logins.
ACCESS_ROLE = Role(name="access", logins=(LOGINS_TRAIT,), node_labels={"*": ("*",)})
#: Hub-side permissions a role may set in ``[permissions]`` beside the session ones:
#: ``admin`` lets its users run ``tctl`` (remoteler/admin.py). Never in certificates.
HUB_PERMISSIONS = ("admin",)
#: Preset role, as Teleport's ``editor``: administers the hub, reaches no node.
EDITOR_ROLE = Role(name="editor", permissions={"admin": True})
PRESET_ROLES = (ACCESS_ROLE, EDITOR_ROLE)


def grants_admin(roles: Sequence[Role]) -> bool:
    """Whether these roles let their user administer the hub: one sets ``admin = true``
    and none sets it false (a veto wins, as deny rules do)."""
    said = [r.permissions.get("admin") for r in roles]
    return True in said and False not in said


@dataclass(frozen=True)
class AccessRule:
    """A role with templates expanded: what a certificate carries to the device."""

    role: str
    logins: tuple[str, ...]
    node_labels: Selector
    deny_logins: tuple[str, ...] = ()
    deny_node_labels: Selector = field(default_factory=dict)
    #: Permissions granted on the nodes where this rule allows the login.
    grants: frozenset[str] = DEFAULT_GRANTS
    #: Permissions this rule turns off everywhere.
    vetoes: frozenset[str] = frozenset()


#: ``{{internal.logins}}``, ``{{external.groups}}``...: a role's value filled from the
#: user's traits (local users: ``internal.logins``; SSO users: ``external.*``, the
#: identity provider's claims, docs/sso.md)
TRAIT_TEMPLATE = re.compile(
    r"\{\{(internal)\.(logins)\}\}|\{\{(external)\.([A-Za-z0-9_.:/-]{1,64})\}\}"
)

Traits = Mapping[str, Sequence[str]]


def is_template(value: str) -> bool:
    return TRAIT_TEMPLATE.fullmatch(value) is not None


def _fill(value: str, traits: Traits) -> list[str]:
    """A role value with its template filled: a template gives the trait's values
    (none when the user has no such trait), anything else is itself."""
    match = TRAIT_TEMPLATE.fullmatch(value)
    if match is None:
        return [value]
    scope, name = match.group(1) or match.group(3), match.group(2) or match.group(4)
    return [str(x) for x in traits.get(f"{scope}.{name}", ())]


def _expand(logins: Iterable[str], traits: Traits) -> tuple[str, ...]:
    out: list[str] = []
    for login in logins:
        expanded = _fill(login, traits)
        if is_template(login):  # a trait's values must be logins to become one
            expanded = [x for x in expanded if _LOGIN_VALUE.fullmatch(x)]
        out.extend(x for x in expanded if x and x not in out)
    return tuple(out)


def _expand_labels(selector: Selector, traits: Traits) -> dict[str, tuple[str, ...]]:
    out: dict[str, tuple[str, ...]] = {}
    for key, patterns in selector.items():
        values: list[str] = []
        for pattern in patterns:
            for value in _fill(pattern, traits):
                if is_template(pattern):  # a trait's value matches literally
                    if 0 < len(value) <= MAX_PATTERN and "*" not in value and not is_regex(value):
                        values.append(value)
                elif value not in values:
                    values.append(value)
        if values or not any(is_template(p) for p in patterns):
            out[key] = tuple(values)
        else:  # no value for any template of this key: the selector matches nothing
            out[key] = ()
    return out


def user_traits(
    logins: Sequence[str], external: Mapping[str, Sequence[str]] | None = None
) -> dict[str, tuple[str, ...]]:
    """The traits templates are filled from: ``internal.logins`` and ``external.*``."""
    traits = {f"external.{k}": tuple(v) for k, v in (external or {}).items()}
    traits["internal.logins"] = tuple(logins)
    return traits


def resolve_rules(
    roles: Iterable[Role], user_logins: Sequence[str], external: Traits | None = None
) -> list[AccessRule]:
    traits = user_traits(user_logins, external)
    return [
        AccessRule(
            role.name,
            _expand(role.logins, traits),
            _expand_labels(role.node_labels, traits),
            _expand(role.deny_logins, traits),
            _expand_labels(role.deny_node_labels, traits),
            role.grants(),
            role.vetoes(),
        )
        for role in roles
    ]


def allowed_logins(rules: Iterable[AccessRule]) -> list[str]:
    """Logins some rule allows and no rule denies: the certificate's principals."""
    rules = list(rules)
    denied = {x for r in rules for x in r.deny_logins}
    out: list[str] = []
    for rule in rules:
        out.extend(x for x in rule.logins if x not in out and x not in denied)
    return out


def may_port_forward(rules: Iterable[AccessRule]) -> bool:
    """Whether any node could allow port forwarding (OpenSSH's permit-port-forwarding)."""
    rules = list(rules)
    if any(Permission.PORT_FORWARDING in r.vetoes for r in rules):
        return False
    return any(Permission.PORT_FORWARDING in r.grants and r.logins for r in rules)


# -- decisions ------------------------------------------------------------------


@dataclass(frozen=True)
class AccessDecision:
    """The answer to "may this user log in as ``login`` on this node, and do what there?"."""

    #: None when allowed; otherwise a one-line reason for the user and the log.
    reason: str | None
    #: What the session may do; all False when refused.
    permissions: Permissions = NO_PERMISSIONS

    @property
    def allowed(self) -> bool:
        return self.reason is None


def _show(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "no labels"


def _decide(
    rules: list[AccessRule], login: str, labels: Mapping[str, str], node: str, user: str
) -> AccessDecision:
    for rule in rules:  # deny rules first: any one of them wins
        if login in rule.deny_logins:
            return AccessDecision(
                f"access denied: login {login!r} is denied for user {user!r} by role {rule.role!r}"
            )
        if labels_match(rule.deny_node_labels, labels):
            return AccessDecision(
                f"access denied: node {node!r} ({_show(labels)}) is denied to user {user!r} "
                f"by role {rule.role!r}"
            )
    login_ok = [r for r in rules if login in r.logins]
    if not login_ok:
        allowed = ", ".join(allowed_logins(rules)) or "none"
        return AccessDecision(
            f"access denied: login {login!r} is not allowed for user {user!r} "
            f"(allowed logins: {allowed}); ask an admin to add it to your roles"
        )
    granting = [r for r in login_ok if labels_match(r.node_labels, labels)]
    if not granting:
        return AccessDecision(
            f"access denied: node {node!r} ({_show(labels)}) matches no role of user {user!r} "
            f"that allows login {login!r}"
        )
    vetoed = {p for r in rules for p in r.vetoes}
    granted = {p for r in granting for p in r.grants} - vetoed
    return AccessDecision(None, Permissions.of(granted))


def decide(
    rules: Iterable[AccessRule],
    login: str,
    labels: Mapping[str, str],
    *,
    node: str = "",
    user: str = "",
) -> AccessDecision:
    """Whether ``login`` is allowed on a node with ``labels``, and with what permissions.

    Allowed when one rule allows both the login and the node, and no rule
    denies the login or the node. A permission is on when a rule that allows
    this access grants it and no rule of the user sets it to false.
    """
    try:
        return _decide(list(rules), login, labels, node, user)
    except PatternError as exc:  # fail closed: a selector we cannot read could be a deny
        return AccessDecision(f"access denied: a role of user {user!r} has a bad selector: {exc}")


def permissions_for(
    rules: Iterable[AccessRule], login: str, labels: Mapping[str, str]
) -> Permissions:
    """What ``login`` may do on a node with ``labels`` (nothing when access is refused)."""
    return decide(rules, login, labels).permissions


def check_access(
    rules: Iterable[AccessRule], login: str, labels: Mapping[str, str], *, node: str, user: str
) -> str | None:
    """None when ``login`` is allowed on a node with ``labels``; else the reason."""
    return decide(rules, login, labels, node=node, user=user).reason


def node_visible(rules: Iterable[AccessRule], labels: Mapping[str, str]) -> bool:
    """Whether ``tsh ls`` shows a node: some rule selects it and no rule denies it."""
    rules = list(rules)
    try:
        if any(labels_match(r.deny_node_labels, labels) for r in rules):
            return False
        return any(labels_match(r.node_labels, labels) for r in rules)
    except PatternError:
        return False


# -- the certificate extension ----------------------------------------------------


def encode_rules(rules: Iterable[AccessRule]) -> str:
    """Compact JSON for the certificate extension (version :data:`RULES_VERSION`)."""
    items = []
    for r in rules:
        item: dict[str, Any] = {
            "r": r.role,
            "l": list(r.logins),
            "n": _selector_dict(r.node_labels),
            "p": sorted(r.grants),
        }
        if r.deny_logins:
            item["dl"] = list(r.deny_logins)
        if r.deny_node_labels:
            item["dn"] = _selector_dict(r.deny_node_labels)
        if r.vetoes:
            item["x"] = sorted(r.vetoes)
        items.append(item)
    return json.dumps({"v": RULES_VERSION, "rules": items}, separators=(",", ":"), sort_keys=True)


def _strings(value: object, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        raise ValueError(f"{what} must be a list of strings")
    return tuple(value)


def _selector(value: object, what: str) -> dict[str, tuple[str, ...]]:
    if not isinstance(value, dict):
        raise ValueError(f"{what} must be an object")
    # a non-list here is refused, never widened or dropped: either could change access
    selector = {str(k): _strings(v, what) for k, v in value.items()}
    check_selector(selector)
    return selector


def decode_rules(text: str) -> list[AccessRule]:
    """Parse :func:`encode_rules` output (or version 1); raise ValueError on anything else.

    Every pattern is compiled here, so a certificate whose selectors this
    process cannot apply is refused as a whole rather than matched partly.
    """
    data = json.loads(text)
    if isinstance(data, list):  # version 1: allow rules only, default permissions
        data = {"v": 1, "rules": data}
    if not isinstance(data, dict) or not isinstance(data.get("v"), int):
        raise ValueError("rules must be a list or a versioned object")
    version = data["v"]
    if version not in (1, RULES_VERSION):
        raise ValueError(f"rules version {version} is not supported here; update the agent")
    items = data.get("rules")
    if not isinstance(items, list):
        raise ValueError("rules must be a list")
    rules = []
    for item in items:
        if not isinstance(item, dict):
            raise ValueError("rule must be an object")
        if version == 1:
            grants, vetoes = DEFAULT_GRANTS, frozenset[str]()
        else:
            grants = frozenset(_strings(item.get("p", []), "permissions"))
            vetoes = frozenset(_strings(item.get("x", []), "vetoes"))
        rules.append(
            AccessRule(
                str(item.get("r", "")),
                _strings(item.get("l", []), "logins"),
                _selector(item.get("n", {}), "node labels"),
                _strings(item.get("dl", []), "deny logins"),
                _selector(item.get("dn", {}), "deny node labels"),
                grants,
                vetoes,
            )
        )
    return rules
