"""What a test needs from the machine: present, or the test fails with a one-line hint.

A test that needs ``sshd``, ``tmux`` or an SFTP server tests a feature the product
promises; skipping it where the tool is missing would show green while the feature
goes untested (docs STYLE 15). ``.ci/run`` installs every package named here::

    from require import require_binary

    SSHD = require_binary("sshd")  # /usr/sbin/sshd, or pytest.fail naming openssh-server

Call it inside a test or fixture (never at import time: a failing import would hide
the hint behind a collection error).
"""

from __future__ import annotations

import os
import shutil

import pytest

#: the Debian package of each tool the suite runs (``.ci/run`` installs them)
PACKAGES = {
    "ssh": "openssh-client",
    "scp": "openssh-client",
    "sftp": "openssh-client",
    "ssh-add": "openssh-client",
    "ssh-agent": "openssh-client",
    "ssh-keygen": "openssh-client",
    "sshd": "openssh-server",
    "sftp-server": "openssh-sftp-server",
    "tmux": "tmux",
    "openssl": "openssl",
    "faketime": "faketime",
    "systemd-analyze": "systemd",
    "unshare": "util-linux",
    "initdb": "postgresql",  # tests/pgkit.py: /usr/lib/postgresql/N/bin
    "pg_ctl": "postgresql",
}

#: where a tool lives when it is not on PATH (sbin and libexec directories)
FIXED_PATHS = {
    "sshd": "/usr/sbin/sshd",
    "sftp-server": "/usr/lib/openssh/sftp-server",
}


def missing_hint(name: str, package: str | None = None) -> str:
    """The one line a test fails with when ``name`` is not installed."""
    package = package or PACKAGES.get(name, name)
    return f"{name} is not installed: apt-get install {package} (.ci/run installs it)"


def find_binary(name: str) -> str | None:
    """The path of ``name`` (on PATH, or where Debian puts it), or None."""
    found = shutil.which(name)
    if found is not None:
        return found
    fixed = FIXED_PATHS.get(name)
    return fixed if fixed is not None and os.access(fixed, os.X_OK) else None


def require_binary(name: str, package: str | None = None) -> str:
    """The path of ``name``; if it is missing, fail the test with a one-line hint
    naming the Debian ``package`` (default: :data:`PACKAGES`)."""
    found = find_binary(name)
    if found is None:
        pytest.fail(missing_hint(name, package), pytrace=False)
    return found


def require_binaries(*names: str) -> None:
    """:func:`require_binary` for each of ``names``."""
    for name in names:
        require_binary(name)


def require_root(why: str) -> None:
    """Fail unless the tests run as root (as ``.ci/run`` does, in its container)."""
    if os.geteuid() != 0:
        pytest.fail(f"needs root ({why}): run the suite as root, as .ci/run does", pytrace=False)
