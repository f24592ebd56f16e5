"""The bundle manifest: what a bundle claims about its payload, and its canonical bytes.

The manifest is JSON with sorted keys, no spaces and ASCII only; those exact
bytes are signed, and only bytes that re-encode identically are accepted, so
one manifest has one encoding. Every field is checked on construction: a
:class:`Manifest` that exists is well-formed (not necessarily trusted).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from firmware_tools.errors import BundleTampered
from firmware_tools.versions import is_version

MAX_MANIFEST = 16 * 1024
MAX_PAYLOAD = 1 << 40
MAX_TARGETS = 64

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+\-]{0,63}")
_LABEL_KEY = re.compile(r"[A-Za-z0-9_.\-/]{1,63}")
_TARGET_VALUE = re.compile(r"[A-Za-z0-9_.\-/:@+ *]{1,253}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_KEY_ID = re.compile(r"SHA256:[A-Za-z0-9+/]{43}")
_HOOK_PART = re.compile(r"[A-Za-z0-9_.+\-@]{1,128}")
MAX_HOOK = 255
_FIELDS = (
    "name",
    "version",
    "targets",
    "size",
    "sha256",
    "min_agent_version",
    "install_hook",
    "created",
    "key_id",
)


def hook_problem(hook: str) -> str | None:
    if not hook or len(hook) > MAX_HOOK:
        return f"install hook must be 1 to {MAX_HOOK} characters"
    if any(p in (".", "..") or not _HOOK_PART.fullmatch(p) for p in hook.split("/")):
        return (
            f"bad install hook {hook[:MAX_HOOK]!r}: use the relative path of an executable "
            "in the payload, such as install.sh or bin/install"
        )
    return None


def _manifest_problem(m: Manifest) -> str | None:
    """What is wrong with ``m``, or None."""
    if not isinstance(m.name, str) or not _NAME.fullmatch(m.name):
        return "bad name: use letters, digits and . _ + - (at most 64), e.g. gateway-fw"
    for what, value in (("version", m.version), ("min_agent_version", m.min_agent_version)):
        if not isinstance(value, str) or not is_version(value):
            return f"bad {what}: use dotted numbers with an optional pre-release, e.g. 1.4.2-rc.1"
    if not isinstance(m.targets, dict) or not 1 <= len(m.targets) <= MAX_TARGETS:
        return f"a bundle needs 1 to {MAX_TARGETS} target labels, e.g. --target board=rpi4"
    for k, v in m.targets.items():
        if not (isinstance(k, str) and isinstance(v, str)):
            return "target labels must be strings"
        if not _LABEL_KEY.fullmatch(k) or not _TARGET_VALUE.fullmatch(v):
            return f"bad target {k[:64]}={v[:64]}: use key=value, '*' matches any run of characters"
    if type(m.size) is not int or not 0 <= m.size <= MAX_PAYLOAD:
        return "bad payload size"
    if not isinstance(m.sha256, str) or not _SHA256.fullmatch(m.sha256):
        return "bad payload sha256"
    if not isinstance(m.install_hook, str):
        return "bad install hook"
    hook = hook_problem(m.install_hook)
    if hook:
        return hook
    if type(m.created) is not float or not math.isfinite(m.created) or m.created < 0:
        return "bad creation time"
    if not isinstance(m.key_id, str) or not _KEY_ID.fullmatch(m.key_id):
        return "bad key id"
    return None


@dataclass(frozen=True)
class Manifest:
    """What a bundle claims about its payload; signed, so trusted once verified."""

    name: str
    """Firmware name, e.g. ``gateway-fw``."""
    version: str
    """Its version (:mod:`firmware_tools.versions`)."""
    targets: dict[str, str]
    """Labels a device must have (value ``*``-globs) to accept the bundle."""
    size: int
    """Payload length in bytes."""
    sha256: str
    """Payload SHA-256, lowercase hex."""
    min_agent_version: str
    """Oldest edge agent that may install it."""
    install_hook: str
    """Relative path of an executable in the payload (docs/firmware-rollouts.md runs it)."""
    created: float
    """Unix time the bundle was built."""
    key_id: str
    """Fingerprint of the signing key (:func:`firmware_tools.keys.key_id`)."""

    def __post_init__(self) -> None:
        problem = _manifest_problem(self)
        if problem:
            raise ValueError(problem)

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _FIELDS} | {"targets": dict(self.targets)}

    def to_bytes(self) -> bytes:
        """Canonical JSON: sorted keys, no spaces, ASCII only; what the signature covers."""
        return json.dumps(
            self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=True
        ).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        """Parse canonical manifest bytes; raise BundleTampered for anything else."""
        if len(data) > MAX_MANIFEST:
            raise BundleTampered("bundle manifest is too large: get the bundle again")
        try:
            obj = json.loads(data.decode("ascii"), parse_constant=_no_constant)
            if not isinstance(obj, dict) or sorted(obj) != sorted(_FIELDS):
                raise ValueError("fields")
            manifest = cls(**obj)
        except (ValueError, TypeError, RecursionError):
            raise BundleTampered(
                "bundle manifest is malformed: get the bundle again from its source"
            ) from None
        if manifest.to_bytes() != data:
            raise BundleTampered("bundle manifest is not canonical: get the bundle again")
        return manifest


def _no_constant(name: str) -> Any:
    raise ValueError(name)
