"""The capability list an agent advertises (remoteler/caps.py) and its validator."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from remoteler.caps import AGENT_CAPS, MAX_CAP_LEN, MAX_CAPS, RESUME, agent_caps, valid_caps


def test_the_agents_own_list_is_valid() -> None:
    assert RESUME in AGENT_CAPS
    assert valid_caps(list(AGENT_CAPS)) == AGENT_CAPS
    assert valid_caps(agent_caps(resume=True)) == AGENT_CAPS


def test_resume_is_left_out_when_the_agent_does_not_serve_it() -> None:
    assert RESUME not in agent_caps(resume=False)
    assert valid_caps(agent_caps(resume=False)) is not None


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        ([], ()),
        (["resume"], ("resume",)),
        (("resume", "x.y-z_9"), ("resume", "x.y-z_9")),
        (["resume", "b", "resume"], ("resume", "b")),  # repeats kept once, in order
        (["a"] * (MAX_CAPS + 1), None),  # too many, even if all the same
        ([f"c{i}" for i in range(MAX_CAPS)], tuple(f"c{i}" for i in range(MAX_CAPS))),
        ([f"c{i}" for i in range(MAX_CAPS + 1)], None),
        (["x" * MAX_CAP_LEN], ("x" * MAX_CAP_LEN,)),
        (["x" * (MAX_CAP_LEN + 1)], None),
        ([""], None),
        (["Resume"], None),
        (["re sume"], None),
        (["resume\n"], None),
        (["\x1b[2J"], None),
        (["r\u00e9sum\u00e9"], None),
        (["a,b"], None),  # tsh ls -v joins them with commas
        (["resume", 1], None),  # one bad item refuses the whole list
        (["resume", None], None),
        ([["resume"]], None),
        ([b"resume"], None),
        ("resume", None),  # a string is not a list of them
        ({"resume": True}, None),
        (None, None),
        (True, None),
        (7, None),
    ],
)
def test_valid_caps(sent: object, kept: tuple[str, ...] | None) -> None:
    assert valid_caps(sent) == kept


@given(st.lists(st.one_of(st.text(max_size=40), st.integers(), st.none()), max_size=20))
def test_whatever_is_kept_is_short_and_plain(sent: list[object]) -> None:
    kept = valid_caps(sent)
    if kept is not None:
        assert len(kept) <= MAX_CAPS
        for cap in kept:
            assert 1 <= len(cap) <= MAX_CAP_LEN
            assert set(cap) <= set("abcdefghijklmnopqrstuvwxyz0123456789_.-")
