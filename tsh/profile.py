"""Where tsh keeps things: ``$TSH_HOME`` (default ``~/.tsh``).

Layout::

    ~/.tsh/profile                     JSON: current hub, user, cluster, CA pin
    ~/.tsh/last_login                  JSON: hub and user of the last login (kept by
                                       'tsh logout': 'tsh login' alone logs in again)
    ~/.tsh/keys/<hub>/<user>           OpenSSH private key (0600)
    ~/.tsh/keys/<hub>/<user>-cert.pub  SSH user certificate
    ~/.tsh/keys/<hub>/<user>-tls.crt   x509 client certificate for the hub
    ~/.tsh/keys/<hub>/<user>-ca.crt    the hub's CA, pinned at first login (two while
                                       the hub's host CA is being rotated)
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from remoteler.ca import write_secret_file


def tsh_home() -> Path:
    return Path(os.environ.get("TSH_HOME") or Path.home() / ".tsh")


@dataclass
class Profile:
    hub: str
    user: str
    cluster: str
    ca_pin: str

    @property
    def key_path(self) -> Path:
        return tsh_home() / "keys" / self.hub / self.user

    def save(self) -> None:
        home = tsh_home()
        home.mkdir(parents=True, exist_ok=True)
        os.chmod(home, 0o700)
        write_secret_file(home / "profile", json.dumps(asdict(self), indent=2).encode())

    @classmethod
    def load(cls) -> Profile | None:
        path = tsh_home() / "profile"
        try:
            data = json.loads(path.read_text())
            return cls(
                str(data["hub"]), str(data["user"]), str(data["cluster"]), str(data["ca_pin"])
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    @staticmethod
    def remove() -> None:
        (tsh_home() / "profile").unlink(missing_ok=True)


def last_login() -> tuple[str, str] | None:
    """(hub, user) of the last successful ``tsh login``; kept across ``tsh logout``."""
    try:
        data = json.loads((tsh_home() / "last_login").read_text())
        return str(data["hub"]), str(data["user"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def remember_login(hub: str, user: str) -> None:
    write_secret_file(tsh_home() / "last_login", json.dumps({"hub": hub, "user": user}).encode())


def known_pin(hub: str) -> str | None:
    """The CA pin remembered for ``hub`` from an earlier login (trust on first use)."""
    path = tsh_home() / "known_hubs.json"
    try:
        value = json.loads(path.read_text()).get(hub)
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def remember_pin(hub: str, pin: str) -> None:
    path = tsh_home() / "known_hubs.json"
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            data = {}
    except (OSError, ValueError):
        data = {}
    data[hub] = pin
    path.parent.mkdir(parents=True, exist_ok=True)
    write_secret_file(path, json.dumps(data, indent=2).encode())


ROTATED = "the hub's {kind} CA was rotated since you logged in: run 'tsh login' again"


async def rotation_notice(hub: str, host_ca_pem: bytes, tls_cert: bytes) -> str | None:
    """Why our certificates no longer work with ``hub`` if a CA rotation explains it.

    Asks the hub's ``ping`` (unverified: it only chooses which advice to print).
    """
    from cryptography import x509

    from remoteler.ca import pin_of_cert_pem, signed_by, split_pem_bundle
    from remoteler.hubconn import fetch_cluster_info

    info = await fetch_cluster_info(hub)
    ours = {pin_of_cert_pem(p) for p in split_pem_bundle(host_ca_pem)}
    if pin_of_cert_pem(str(info["host_ca_pem"]).encode()) not in ours:
        return ROTATED.format(kind="host")
    cert = x509.load_pem_x509_certificate(tls_cert)
    for pem in info.get("user_ca_pems") or [info.get("user_ca_pem", "")]:
        if signed_by(cert, x509.load_pem_x509_certificate(str(pem).encode()).public_key()):
            return None
    return ROTATED.format(kind="user")
