"""Web sessions (hub/web/sessions.py): idle and certificate expiry, caps, CSRF, ends."""

from __future__ import annotations

from hub.web.sessions import WebSessions, csrf_ok
from remoteler.ca import generate_private_key
from remoteler.identity import UserIdentity


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _ident() -> UserIdentity:
    return UserIdentity(generate_private_key(), "", b"", b"")


def test_idle_sessions_end_and_activity_keeps_them() -> None:
    clock = Clock()
    store = WebSessions(idle_timeout=60, clock=clock)
    s = store.create("alice", _ident(), expires=clock.now + 3600, remote_addr="127.0.0.1")
    ended: list[str] = []
    s.closers.append(ended.append)
    clock.now += 50
    assert store.get(s.id) is s  # activity
    clock.now += 50
    assert store.get(s.id) is s  # 50 s after the last activity: still here
    clock.now += 61
    assert store.get(s.id) is None and "idle" in ended[0]
    assert store.get(s.id) is None and len(store) == 0


def test_a_session_ends_with_its_certificate() -> None:
    clock = Clock()
    store = WebSessions(idle_timeout=600, clock=clock)
    s = store.create("alice", _ident(), expires=clock.now + 100, remote_addr="")
    clock.now += 100
    assert store.get(s.id) is None


def test_caps_drop_the_oldest_per_user_and_overall() -> None:
    clock = Clock()
    store = WebSessions(clock=clock, max_sessions=5, max_per_user=2)
    first = store.create("alice", _ident(), clock.now + 99, "")
    second = store.create("alice", _ident(), clock.now + 99, "")
    third = store.create("alice", _ident(), clock.now + 99, "")
    assert store.get(first.id) is None and store.get(second.id) and store.get(third.id)
    others = [store.create(f"u{i}", _ident(), clock.now + 99, "") for i in range(4)]
    assert len(store) == 5
    assert store.get(second.id) is None  # least recently used overall went
    assert all(store.get(o.id) for o in others)


def test_csrf_token_must_match_exactly() -> None:
    store = WebSessions()
    s = store.create("alice", _ident(), 10**12, "")
    assert csrf_ok(s, s.csrf)
    assert not csrf_ok(s, None) and not csrf_ok(s, "") and not csrf_ok(s, s.csrf[:-1] + "x")


def test_drop_user_ends_every_session_of_that_user() -> None:
    store = WebSessions()
    a = [store.create("alice", _ident(), 10**12, "") for _ in range(3)]
    b = store.create("bob", _ident(), 10**12, "")
    ended: list[str] = []
    a[0].closers.append(ended.append)
    assert store.drop_user("alice", "locked: incident 7") == 3
    assert ended == ["locked: incident 7"] and store.get(b.id) is b
