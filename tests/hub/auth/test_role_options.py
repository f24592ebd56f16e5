"""Role options ``max_sessions`` and ``disconnect_expired_cert``: parsing, the
most-restrictive-role rule, and the flag the hub signs into user certificates."""

from __future__ import annotations

from typing import Any

import pytest

from hub.api.sessioncap import SessionCounter, TooManySessions
from hub.auth.roles import parse_role
from hub.auth.service import AuthService
from hub.storage.api import User
from remoteler.access import Role
from remoteler.ca import generate_private_key, parse_certificate, public_key_to_openssh
from remoteler.errors import UsageError
from remoteler.roleopts import (
    DISCONNECT_EXTENSION,
    SessionLimit,
    ends_at_expiry,
    expiry_message,
    session_limit,
)
from remoteler.roleopts import disconnect_expired_cert as disconnect

BASE = {"kind": "role", "name": "ops", "logins": ["pi"], "node_labels": {"*": "*"}}


def test_options_parse_and_round_trip() -> None:
    role = parse_role({**BASE, "max_sessions": 4, "disconnect_expired_cert": False})
    assert role.max_sessions == 4 and role.disconnect_expired_cert is False
    assert Role.from_dict(role.to_dict()) == role
    plain = parse_role(BASE)
    assert plain.max_sessions is None and plain.disconnect_expired_cert is None
    # a role stored before the options existed
    stored = {k: v for k, v in plain.to_dict().items() if k not in ("max_sessions",)}
    assert Role.from_dict(stored) == plain


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"max_sessions": 0}, "max_sessions must be a whole number from 1 to 10000"),
        ({"max_sessions": -1}, "max_sessions must be a whole number"),
        ({"max_sessions": 10001}, "max_sessions must be a whole number"),
        ({"max_sessions": "5"}, "max_sessions must be a whole number"),
        ({"max_sessions": 2.5}, "max_sessions must be a whole number"),
        ({"max_sessions": True}, "max_sessions must be a whole number"),
        ({"disconnect_expired_cert": "yes"}, "disconnect_expired_cert must be true or false"),
        ({"disconnect_expired_cert": 1}, "disconnect_expired_cert must be true or false"),
    ],
)
def test_bad_options_give_one_line(overrides: dict[str, Any], needle: str) -> None:
    with pytest.raises(UsageError) as exc:
        parse_role({**BASE, **overrides})
    assert needle in str(exc.value) and "\n" not in str(exc.value)


def test_smallest_max_sessions_wins() -> None:
    a, b = Role("a", max_sessions=10), Role("b", max_sessions=4)
    assert session_limit([]) == session_limit([Role("x")])
    assert session_limit([Role("x")]).limit == 32 and session_limit([Role("x")]).role is None
    assert (session_limit([a, b]).limit, session_limit([a, b]).role) == (4, "b")
    # above the default only when every role allows more
    assert session_limit([Role("x"), Role("big", max_sessions=100)]).limit == 32
    assert session_limit([Role("big", max_sessions=100)]).limit == 100
    assert session_limit([b]).refusal("alice") == (
        "too many open sessions for alice (4, role b); close one or ask an admin"
    )


def test_disconnect_default_and_most_restrictive_role() -> None:
    unset, on, off = Role("u"), Role("on", disconnect_expired_cert=True), Role("off")
    off = Role("off", disconnect_expired_cert=False)
    assert disconnect([unset], 3599) and not disconnect([unset], 3600)
    assert disconnect([], 60) and not disconnect([], 7200)
    assert disconnect([on], 12 * 3600)
    assert not disconnect([off], 60)
    assert disconnect([off, unset], 60)  # the unset role's default still says yes
    assert not disconnect([off, unset], 7200)
    assert disconnect([off, on], 7200)


def test_expiry_message_names_the_time_in_utc() -> None:
    assert expiry_message(3600 * 5 + 61).startswith(
        "your certificate expired at 05:01:01 UTC; session ended"
    )


async def _cert_extensions(auth: AuthService, roles: list[str], ttl: int) -> Any:
    user = User("alice", tuple(roles), ("pi",), None, None, 0, 0.0)
    pub = public_key_to_openssh(generate_private_key().public_key())
    issued = await auth.issue_user_certs(user, pub, ttl)
    return parse_certificate(issued.ssh_cert).extensions


async def test_certificate_carries_the_flag(auth: AuthService) -> None:
    await auth.storage.roles.put(
        Role("keep", ("pi",), {"*": ("*",)}, disconnect_expired_cert=False)
    )
    await auth.storage.roles.put(Role("cut", ("pi",), {"*": ("*",)}, disconnect_expired_cert=True))
    assert ends_at_expiry(await _cert_extensions(auth, ["access"], 600))
    assert not ends_at_expiry(await _cert_extensions(auth, ["access"], 3600))
    assert not ends_at_expiry(await _cert_extensions(auth, ["keep"], 600))
    exts = await _cert_extensions(auth, ["access", "cut"], 8 * 3600)
    assert exts[DISCONNECT_EXTENSION] == ""


def test_session_counter_releases_once() -> None:
    counter = SessionCounter()
    limit = SessionLimit(2, "ops")
    first, second = counter.acquire("alice", limit), counter.acquire("alice", limit)
    with pytest.raises(TooManySessions, match=r"\(2, role ops\)"):
        counter.acquire("alice", limit)
    counter.acquire("bob", limit)  # per user
    first()
    first()  # a second release of the same slot gives nothing back twice
    assert counter.count("alice") == 1
    counter.acquire("alice", limit)
    assert counter.count("alice") == 2
    second()
    assert counter.count("alice") == 1
