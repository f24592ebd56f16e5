"""Check a loaded node identity before the agent dials with it.

A damaged ``node.crt`` or ``host_ca.crt``, a certificate that does not belong to
``node.key``, or an expired certificate would otherwise fail every dial, for ever,
with a TLS traceback in the log (a bad ``node-cert.pub`` or ``user_ca.pub``: every
SSH session). :func:`check_identity` turns each into one line
naming the file and the fix; ``edge-agent start`` prints it and exits 1.

Only expiry is checked against the clock (``now``, passed in): a device that boots
with its clock at 1970 still starts (its certificate is "not yet valid" only by
that clock, and the hub judges with its own); a certificate past its end by this
device's clock is refused, naming both times so a wrong clock is easy to spot.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from edge_agent.identity import ROTATION_FILE, NodeIdentity
from remoteler.ca import CAError, public_key_from_openssh
from remoteler.ca.sshcert import parse_certificate
from remoteler.ca.x509 import load_certificate, split_pem_bundle
from remoteler.errors import ConfigError


def _fix(d: Path) -> str:
    return (
        f"remove {d} and start the agent again with a new join token "
        "('tctl tokens add --type node')"
    )


def check_identity(ident: NodeIdentity, directory: Path, now: float, slack: float = 0.0) -> None:
    """Raise :class:`ConfigError` (one line: the file, what is wrong, the fix) if
    ``ident``, loaded from ``directory`` (``DATA/identity``), cannot dial the hub."""
    rotated = (directory / ROTATION_FILE).exists()

    def source(name: str) -> Path:
        # After a CA rotation the certificates come from rotation.json (identity.py).
        return directory / (ROTATION_FILE if rotated else name)

    try:
        cert = load_certificate(ident.tls_cert)
    except CAError:
        raise ConfigError(
            f"{source('node.crt')} holds no readable x509 certificate: {_fix(directory)}"
        ) from None
    cas = split_pem_bundle(ident.host_ca_pem)
    try:
        if not cas:
            raise CAError("no PEM certificate")
        for pem in cas:
            load_certificate(pem)
    except CAError:
        raise ConfigError(
            f"{source('host_ca.crt')} holds no readable CA certificate: {_fix(directory)}"
        ) from None
    if cert.public_key() != ident.key.public_key():
        raise ConfigError(
            f"{source('node.crt')} is not the certificate of {directory / 'node.key'} "
            f"(another node's, or a key restored from another backup): {_fix(directory)}"
        )
    _check_ssh_files(ident, directory, source)
    end = cert.not_valid_after_utc
    clock = datetime.fromtimestamp(now, UTC)
    # A clock up to ``slack`` (--max-clock-skew) ahead is corrected for once the hub
    # answers; only an expiry further back than that is this device's certificate's.
    if end.timestamp() + slack <= now:
        raise ConfigError(
            f"{source('node.crt')} expired at {end:%Y-%m-%d %H:%M:%S} UTC "
            f"(this device's clock says {clock:%Y-%m-%d %H:%M:%S} UTC; if that is wrong, "
            f"set the clock): {_fix(directory)}"
        )


def _check_ssh_files(ident: NodeIdentity, directory: Path, source: Callable[[str], Path]) -> None:
    """The SSH side: the host certificate must be for ``node.key``, ``user_ca.pub``
    must hold at least one key (else every session would fail, not the tunnel)."""
    try:
        host_cert = parse_certificate(ident.ssh_cert)
    except CAError:
        raise ConfigError(
            f"{source('node-cert.pub')} holds no readable SSH host certificate: {_fix(directory)}"
        ) from None
    if host_cert.subject_public != ident.key.public_key():
        raise ConfigError(
            f"{source('node-cert.pub')} is not the certificate of {directory / 'node.key'}: "
            f"{_fix(directory)}"
        )
    try:
        lines = [ln for ln in ident.user_ca_ssh.splitlines() if ln.strip()]
        if not lines:
            raise CAError("no key")
        for line in lines:
            public_key_from_openssh(line)
    except CAError:
        raise ConfigError(
            f"{source('user_ca.pub')} holds no readable user CA key: {_fix(directory)}"
        ) from None
