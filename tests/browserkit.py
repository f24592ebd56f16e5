"""Debian's Chromium for the browser tests and the web bench, through Playwright.

The browser trusts the hub's web certificate by its public key (Chromium's
``--ignore-certificate-errors-spki-list``), as it would trust DATA/web/ca.crt once
installed; nothing else is relaxed. Playwright never downloads a browser here.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
HINT = "chromium is missing: apt-get install chromium (.ci/run installs it)"


def chromium_path() -> str | None:
    path = shutil.which("chromium") or CHROMIUM
    return path if os.access(path, os.X_OK) else None


def spki_hash(hub_data: Path) -> str:
    """What --ignore-certificate-errors-spki-list takes for the hub's web certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    cert = x509.load_pem_x509_certificate((hub_data / "web" / "hub.crt").read_bytes())
    spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def launch(pw: Any, hub_data: Path, executable: str) -> Any:
    """A headless Chromium that trusts this hub's web certificate."""
    return pw.chromium.launch(
        executable_path=executable,
        args=[*CHROMIUM_ARGS, f"--ignore-certificate-errors-spki-list={spki_hash(hub_data)}"],
    )
