"""Firmware and agent version numbers: dotted numbers with an optional pre-release.

``MAJOR[.MINOR[.PATCH[.BUILD]]][-PRERELEASE]``: one to four numeric parts
without leading zeros, missing parts count as 0 (``1.2`` equals ``1.2.0``);
a pre-release (``-rc.1``, ``-beta``) sorts before the release it precedes and
pre-release identifiers compare as in SemVer 2.0.0 §11 (numbers numerically,
below words; words in ASCII order; more identifiers win a tie). Build
metadata (``+...``) is refused: two different bundles must never compare equal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

MAX_VERSION_LEN = 64
_VERSION = re.compile(
    r"(0|[1-9][0-9]*)((?:\.(?:0|[1-9][0-9]*)){0,3})(?:-([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?"
)


@dataclass(frozen=True, order=False)
class Version:
    numbers: tuple[int, int, int, int]
    """Numeric parts, padded with zeros to four."""
    pre: tuple[int | str, ...]
    """Pre-release identifiers; empty for a release."""


def parse_version(text: str) -> Version:
    """Parse ``text``; raise ValueError saying what a version looks like."""
    m = _VERSION.fullmatch(text) if len(text) <= MAX_VERSION_LEN else None
    if m is None:
        raise ValueError(
            f"bad version {text[:MAX_VERSION_LEN]!r}: use dotted numbers with an optional "
            "pre-release, e.g. 1.4.2 or 2.0.0-rc.1"
        )
    parts = [int(m.group(1)), *(int(p) for p in m.group(2).split(".")[1:])]
    numbers = (*parts, 0, 0, 0, 0)[:4]
    pre: tuple[int | str, ...] = ()
    if m.group(3):
        pre = tuple(
            int(p) if p.isdigit() and (p == "0" or not p.startswith("0")) else p
            for p in m.group(3).split(".")
        )
    return Version((numbers[0], numbers[1], numbers[2], numbers[3]), pre)


def is_version(text: str) -> bool:
    try:
        parse_version(text)
    except ValueError:
        return False
    return True


def _cmp(a: Any, b: Any) -> int:
    return int(a > b) - int(a < b)


def _cmp_pre(a: tuple[int | str, ...], b: tuple[int | str, ...]) -> int:
    if not a or not b:  # a release sorts after its pre-releases
        return _cmp(not a, not b)
    for x, y in zip(a, b, strict=False):
        if isinstance(x, int) and isinstance(y, int):
            c = _cmp(x, y)
        elif isinstance(x, int):
            c = -1
        elif isinstance(y, int):
            c = 1
        else:
            c = _cmp(x, y)
        if c:
            return c
    return _cmp(len(a), len(b))


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1 as ``a`` is older than, equal to or newer than ``b``.

    Raise ValueError for a string that is not a version (see the module docstring).
    """
    va, vb = parse_version(a), parse_version(b)
    return _cmp(va.numbers, vb.numbers) or _cmp_pre(va.pre, vb.pre)
