"""A signed firmware bundle for tests of roll-outs: a random root file system image and
an install hook, for boards labelled ``board=rpi4``."""

from __future__ import annotations

import os
from pathlib import Path

from firmware_tools.bundle import build_bundle
from firmware_tools.keys import load_signing_key


def signed_bundle(root: Path, key: Path, version: str, hook: str, payload: int) -> Path:
    """Build ``root/gw-VERSION.bundle`` signed with ``key``: ``payload`` random bytes
    of ``rootfs.img`` and ``hook`` as ``install.sh``."""
    files = root / f"payload-{version}"
    files.mkdir()
    (files / "rootfs.img").write_bytes(os.urandom(payload))
    install = files / "install.sh"
    install.write_text(hook)
    install.chmod(0o755)
    bundle = root / f"gw-{version}.bundle"
    build_bundle(
        files,
        bundle,
        name="gw-fw",
        version=version,
        targets={"board": "rpi4"},
        min_agent_version="0.1.0",
        install_hook="install.sh",
        key=load_signing_key(key),
    )
    return bundle
