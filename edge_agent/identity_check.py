"""Check a loaded node identity before the agent dials with it.

A damaged ``node.crt`` or ``host_ca.crt``, a certificate that does not belong to
``node.key``, or an expired certificate would otherwise fail every dial, for ever,
with a TLS traceback in the log. :func:`check_identity` turns each into one line
naming the file and the fix; ``edge-agent start`` prints it and exits 1.

Only expiry is checked against the clock (``now``, passed in): a device that boots
with its clock at 1970 still starts (its certificate is "not yet valid" only by
that clock, and the hub judges with its own); a certificate past its end by this
device's clock is refused, naming both times so a wrong clock is easy to spot.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from edge_agent.identity import ROTATION_FILE, NodeIdentity
from remoteler.ca import CAError
from remoteler.ca.x509 import load_certificate, split_pem_bundle
from remoteler.errors import ConfigError


def _fix(d: Path) -> str:
    return (
        f"remove {d} and start the agent again with a new join token "
        "('tctl tokens add --type node')"
    )


def check_identity(ident: NodeIdentity, directory: Path, now: float) -> None:
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
    end = cert.not_valid_after_utc
    clock = datetime.fromtimestamp(now, UTC)
    if end <= clock:
        raise ConfigError(
            f"{source('node.crt')} expired at {end:%Y-%m-%d %H:%M:%S} UTC "
            f"(this device's clock says {clock:%Y-%m-%d %H:%M:%S} UTC; if that is wrong, "
            f"set the clock): {_fix(directory)}"
        )
