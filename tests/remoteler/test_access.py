from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from remoteler.access import (
    ACCESS_ROLE,
    LOGINS_TRAIT,
    NO_PERMISSIONS,
    RULES_EXTENSION,
    RULES_VERSION,
    AccessDecision,
    AccessRule,
    PatternError,
    Permission,
    Permissions,
    Role,
    allowed_logins,
    check_access,
    compile_pattern,
    decide,
    decode_rules,
    encode_rules,
    labels_match,
    may_port_forward,
    node_visible,
    permissions_for,
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


# -- deny rules ---------------------------------------------------------------------

LAB = Role("lab", ("pi", "root"), {"env": ("lab",)})


def _decide(roles: list[Role], login: str, labels: dict[str, str]) -> AccessDecision:
    return decide(resolve_rules(roles, ["me"]), login, labels, node="n", user="alice")


def test_deny_login_beats_an_allow_in_another_role() -> None:
    no_root = Role("no-root", deny_logins=("root",))
    assert _decide([LAB], "root", {"env": "lab"}).allowed
    refused = _decide([LAB, no_root], "root", {"env": "lab"})
    assert (
        refused.reason is not None and "denied" in refused.reason and "'no-root'" in refused.reason
    )
    assert refused.permissions == NO_PERMISSIONS
    assert _decide([LAB, no_root], "pi", {"env": "lab"}).allowed


def test_deny_node_labels_beat_an_allow_in_the_same_role() -> None:
    role = Role("lab", ("pi",), {"*": ("*",)}, deny_node_labels={"tier": ("^safety-.*$",)})
    assert _decide([role], "pi", {"env": "lab"}).allowed
    refused = _decide([role], "pi", {"env": "lab", "tier": "safety-brakes"})
    assert refused.reason is not None and "tier=safety-brakes" in refused.reason
    assert _decide([role], "pi", {"env": "lab", "tier": "infotainment"}).allowed


def test_deny_login_template_expands_to_the_users_logins() -> None:
    role = Role("r", ("pi", "me"), {"*": ("*",)}, deny_logins=(LOGINS_TRAIT,))
    assert not _decide([role], "me", {}).allowed
    assert _decide([role], "pi", {}).allowed


def test_denied_logins_are_not_principals() -> None:
    rules = resolve_rules([LAB, Role("no-root", deny_logins=("root",))], [])
    assert allowed_logins(rules) == ["pi"]


def test_tsh_ls_hides_denied_nodes() -> None:
    rules = resolve_rules(
        [Role("r", ("pi",), {"env": ("*",)}, deny_node_labels={"env": ("prod",)})], []
    )
    assert node_visible(rules, {"env": "lab"})
    assert not node_visible(rules, {"env": "prod"})
    assert not node_visible(rules, {"site": "x"})


# -- patterns -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "value", "expected"),
    [
        ("^prod-[0-9]+$", "prod-42", True),
        ("^prod-[0-9]+$", "prod-42x", False),
        ("^prod-[0-9]+$", "xprod-42", False),
        ("^prod$", "prod\n", False),  # fullmatch: $ does not stop before a newline
        ("^(eu|us)-(north|south)$", "eu-south", True),
        ("^(eu|us)-(north|south)$", "eu-southx", False),
        ("^a$|^b$", "b", True),
        ("^a|b$", "ab", False),  # the whole value, whatever the alternation says
        ("lab", "lab", True),
        ("lab", "lab2", False),
        ("a*c", "abbbc", True),
        ("a*c", "abbbcd", False),
        ("*-eu-*", "cam-eu-7", True),
        ("a?c", "abc", False),  # only * is a wildcard (Teleport's globs)
        ("a?c", "a?c", True),
        ("[ab]", "a", False),
        ("^$", "", True),
        ("*", "", True),
    ],
)
def test_patterns(pattern: str, value: str, expected: bool) -> None:
    assert compile_pattern(pattern)(value) is expected


@pytest.mark.parametrize(
    ("pattern", "needle"),
    [
        ("^(a+)+$", "nested quantifiers"),
        ("^(a*)*b$", "nested quantifiers"),
        ("^([a-z]+-?)*$", "nested quantifiers"),
        ("^(.*?,){11}P$", "nested quantifiers"),
        ("^(a|aa)*$", "alternation under a quantifier"),
        ("^(a|ab)+c$", "alternation under a quantifier"),
        ("^.*a.*b.*c.*d$", "variable quantifiers"),
        ("^(a)\\1$", "backreferences"),
        ("^(?=a)a$", "lookahead"),
        ("^(?<!a)b$", "lookahead"),
        ("^[a-$", "invalid regex"),
        ("^(prod$", "invalid regex"),
        ("^" + "a" * 300 + "$", "longer than"),
    ],
)
def test_pathological_or_invalid_regex_is_refused(pattern: str, needle: str) -> None:
    with pytest.raises(PatternError, match=re.escape(needle)):
        compile_pattern(pattern)


def test_worst_case_accepted_regex_stays_bounded() -> None:
    """Three variable quantifiers over a 253-character label: polynomial, not exponential."""
    matcher = compile_pattern("^.*-.*-.*-x$")
    assert matcher("-" * 253) is False  # finishes (no timing asserted; a hang fails the run)


def test_an_unreadable_selector_fails_closed() -> None:
    rules = [AccessRule("r", ("pi",), {"*": ("*",)}, deny_node_labels={"env": ("^(a+)+$",)})]
    refused = decide(rules, "pi", {"env": "lab"}, node="n", user="u")
    assert refused.reason is not None and "bad selector" in refused.reason
    assert not node_visible(rules, {"env": "lab"})


# -- permissions ----------------------------------------------------------------------


def test_default_permissions_are_teleports() -> None:
    perms = _decide([LAB], "pi", {"env": "lab"}).permissions
    assert perms == Permissions(port_forwarding=True, file_transfer=True)
    assert perms.allows("file_transfer") and not perms.allows(Permission.SERIAL_CONSOLE)
    with pytest.raises(ValueError):
        perms.allows("teleport")


def test_permissions_come_from_the_roles_that_allow_this_node() -> None:
    serial = Role("bench", ("pi",), {"env": ("bench",)}, permissions={"serial_console": True})
    rules = resolve_rules([LAB, serial], [])
    assert not permissions_for(rules, "pi", {"env": "lab"}).serial_console
    assert permissions_for(rules, "pi", {"env": "bench"}).serial_console
    assert permissions_for(rules, "pi", {"env": "prod"}) == NO_PERMISSIONS  # refused


def test_an_explicit_false_is_a_veto_across_roles() -> None:
    no_fwd = Role("no-forwarding", permissions={"port_forwarding": False})
    rules = resolve_rules([LAB, no_fwd], [])
    perms = permissions_for(rules, "pi", {"env": "lab"})
    assert not perms.port_forwarding and perms.file_transfer
    assert not may_port_forward(rules)
    assert may_port_forward(resolve_rules([LAB], []))


# -- the certificate extension ------------------------------------------------------------


def test_version_2_roundtrip_with_deny_and_permissions() -> None:
    roles = [
        Role(
            "r",
            ("pi",),
            {"env": ("^lab-[0-9]+$", "x*")},
            deny_logins=("root",),
            deny_node_labels={"tier": ("safety",)},
            permissions={"serial_console": True, "file_transfer": False},
        )
    ]
    rules = resolve_rules(roles, [])
    text = encode_rules(rules)
    assert json.loads(text)["v"] == RULES_VERSION
    assert decode_rules(text) == rules
    assert rules[0].grants == {"port_forwarding", "serial_console"}
    assert rules[0].vetoes == {"file_transfer"}


def test_version_1_certificates_still_read_with_default_permissions() -> None:
    rules = decode_rules('[{"r": "access", "l": ["pi"], "n": {"*": ["*"]}}]')
    assert permissions_for(rules, "pi", {}) == Permissions(port_forwarding=True, file_transfer=True)


@pytest.mark.parametrize(
    "text",
    [
        '{"v": 3, "rules": []}',
        '{"rules": []}',
        '{"v": 2}',
        '{"v": 2, "rules": [{"l": ["pi"], "n": {}, "dl": "root"}]}',
        '{"v": 2, "rules": [{"l": ["pi"], "n": {}, "dn": {"env": "prod"}}]}',
        '{"v": 2, "rules": [{"l": ["pi"], "n": {"env": ["^(a+)+$"]}}]}',
        '{"v": 2, "rules": [{"l": ["pi"], "n": {}, "p": "serial_console"}]}',
    ],
)
def test_malformed_version_2_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        decode_rules(text)


def test_a_v2_rule_without_permissions_grants_none() -> None:
    rules = decode_rules('{"v": 2, "rules": [{"r": "x", "l": ["pi"], "n": {"*": ["*"]}}]}')
    decision = decide(rules, "pi", {})
    assert decision.allowed and decision.permissions == NO_PERMISSIONS


def test_device_decision_carries_the_permissions() -> None:
    from edge_agent.authz import connection_permissions, decide_user_cert
    from remoteler.ca import DEFAULT_USER_EXTENSIONS, CertAuthority, generate_private_key

    ca = CertAuthority.generate("user", "test")
    roles = [Role("bench", ("pi",), {"env": ("bench",)}, permissions={"firmware_push": True})]
    ext = dict(DEFAULT_USER_EXTENSIONS)
    ext[RULES_EXTENSION] = encode_rules(resolve_rules(roles, []))
    cert = ca.sign_ssh_user_cert(
        generate_private_key().public_key(),
        key_id="alice",
        principals=["pi"],
        ttl_seconds=600,
        now=1_700_000_000,
        extensions=ext,
    )
    here = decide_user_cert(cert, "pi", ca.public_key, {"env": "bench"}, "dev1", 1_700_000_100)
    assert here.allowed and here.permissions.firmware_push
    elsewhere = decide_user_cert(cert, "pi", ca.public_key, {"env": "x"}, "dev1", 1_700_000_100)
    assert not elsewhere.allowed and elsewhere.permissions == NO_PERMISSIONS

    class Conn:
        def __init__(self, info: dict[str, Any]) -> None:
            self.info = info

        def get_extra_info(self, name: str, default: Any = None) -> Any:
            return self.info.get(name, default)

    assert connection_permissions(Conn({"remoteler_permissions": here.permissions})).firmware_push
    assert connection_permissions(Conn({})) == NO_PERMISSIONS
    assert connection_permissions(None) == NO_PERMISSIONS


# -- properties ----------------------------------------------------------------------------

_word = st.text(alphabet="abcdefgh-0123", min_size=0, max_size=8)
_login = st.sampled_from(["pi", "root", "ubuntu", "me"])
_labels = st.dictionaries(st.sampled_from(["env", "site", "tier"]), _word, max_size=3)
_pattern = st.one_of(
    _word,
    _word.map(lambda w: w + "*"),
    _word.map(lambda w: "*" + w),
    _word.map(lambda w: "^" + re.escape(w) + ".*$"),
    st.just("*"),
)
_selector = st.dictionaries(
    st.sampled_from(["env", "site", "tier", "*"]),
    st.lists(_pattern, min_size=1, max_size=2).map(tuple),
    max_size=2,
)
_role = st.builds(
    Role,
    name=st.sampled_from(["a", "b", "c"]),
    logins=st.lists(_login, max_size=3).map(tuple),
    node_labels=_selector,
    deny_logins=st.lists(_login, max_size=1).map(tuple),
    deny_node_labels=_selector,
    permissions=st.dictionaries(st.sampled_from([p.value for p in Permission]), st.booleans()),
)


@settings(max_examples=300, deadline=None)
@given(roles=st.lists(_role, max_size=4), login=_login, labels=_labels)
def test_property_deny_always_wins(roles: list[Role], login: str, labels: dict[str, str]) -> None:
    rules = resolve_rules(roles, ["me"])
    decision = decide(rules, login, labels)
    denied = any(login in r.deny_logins or labels_match(r.deny_node_labels, labels) for r in rules)
    if denied:
        assert not decision.allowed and decision.permissions == NO_PERMISSIONS
    # and adding a deny role for exactly this login or this node always refuses
    for deny in (
        Role("deny-login", deny_logins=(login,)),
        Role("deny-node", deny_node_labels={k: (v,) for k, v in labels.items()} or {"*": ("*",)}),
    ):
        assert not decide(resolve_rules([*roles, deny], ["me"]), login, labels).allowed
    if decision.allowed:  # allowed: some single role allows both, and vetoes hold
        assert any(login in r.logins and labels_match(r.node_labels, labels) for r in rules)
        vetoed = {p for r in rules for p in r.vetoes}
        assert not set(decision.permissions.names()) & vetoed
    assert decode_rules(encode_rules(rules)) == rules


@settings(max_examples=300, deadline=None)
@given(word=_word, value=st.text(max_size=12))
def test_property_regex_is_fully_anchored(word: str, value: str) -> None:
    exact = compile_pattern("^" + re.escape(word) + "$")
    assert exact(value) is (value == word)
    assert exact(word + "\n") is False
    prefix = compile_pattern("^" + re.escape(word) + "[a-z]*$")
    assert prefix(value) is (re.fullmatch(re.escape(word) + "[a-z]*", value) is not None)


@settings(max_examples=300, deadline=None)
@given(
    parts=st.lists(_word, min_size=1, max_size=4), value=st.text(alphabet="abc-0*?", max_size=12)
)
def test_property_glob_matches_the_reference(parts: list[str], value: str) -> None:
    pattern = "*".join(parts)
    reference = re.fullmatch(".*".join(re.escape(p) for p in parts), value, re.DOTALL)
    assert compile_pattern(pattern)(value) is (reference is not None)


def test_external_traits_fill_logins_and_label_values() -> None:
    from remoteler.access import resolve_rules

    role = Role(
        name="sso",
        logins=("{{external.logins}}", "{{internal.logins}}", "pi"),
        node_labels={"team": ("{{external.groups}}",), "env": ("lab-*",)},
        deny_logins=("{{external.banned}}",),
    )
    external = {
        "logins": ("alice", "not a login!", "*"),
        "groups": ("ops", "dev*"),
        "banned": ("pi",),
    }
    [rule] = resolve_rules([role], ["bob"], external)
    assert rule.logins == ("alice", "bob", "pi")  # values that are no login are dropped
    assert rule.node_labels == {"team": ("ops",), "env": ("lab-*",)}  # trait values are literal
    assert rule.deny_logins == ("pi",)
    assert allowed_logins([rule]) == ["alice", "bob"]
    assert decide([rule], "alice", {"team": "ops", "env": "lab-1"}).allowed
    assert not decide([rule], "alice", {"team": "dev-x", "env": "lab-1"}).allowed


def test_a_template_with_no_trait_matches_nothing() -> None:
    from remoteler.access import resolve_rules

    role = Role(
        name="sso", logins=("{{external.logins}}",), node_labels={"team": ("{{external.g}}",)}
    )
    [rule] = resolve_rules([role], ["bob"])
    assert rule.logins == ()
    assert rule.node_labels == {"team": ()}
    assert not labels_match(rule.node_labels, {"team": ""})
