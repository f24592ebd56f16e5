"""The SSH algorithms every Remoteler SSH endpoint offers: modern ones only.

One set for the device's embedded server (through the tunnel and
``--local-listen``), the hub's recording proxy (server and upstream client) and
``tsh`` as a client; ``tsh config`` writes the same lists for OpenSSH. No NIST
curves, no finite-field Diffie-Hellman, no SHA-1, no CBC, no encrypt-and-MAC
(docs/security.md, "SSH algorithms").

The lists are names only (no asyncssh import): :func:`kex_algs` drops the
post-quantum hybrids the installed asyncssh cannot do (ML-KEM needs
cryptography >= 45, sntrup761 needs liboqs), so both ends always share
``curve25519-sha256``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

#: Key exchange, preferred first: the post-quantum hybrids, then X25519.
KEX = (
    "mlkem768x25519-sha256",
    "sntrup761x25519-sha512",
    "sntrup761x25519-sha512@openssh.com",
    "curve25519-sha256",
    "curve25519-sha256@libssh.org",
)
#: AEAD ciphers only. AES-GCM first: with AES instructions it nearly doubles
#: asyncssh's throughput over chacha20-poly1305 (bench/relay.py, docs/performance.md).
CIPHERS = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
)
#: MACs: never used with the AEAD ciphers above (they carry their own tag); listed
#: so that a peer which insists on a MAC name list finds an encrypt-then-MAC SHA-2 one.
MACS = ("hmac-sha2-256-etm@openssh.com", "hmac-sha2-512-etm@openssh.com")
#: Host keys: nodes (and the recording proxy) present an Ed25519 key with a
#: certificate from the host CA.
HOST_KEY_ALGS = ("ssh-ed25519-cert-v01@openssh.com", "ssh-ed25519")
#: Signatures (user authentication, ``server-sig-algs``): every key and CA is Ed25519.
SIGNATURE_ALGS = ("ssh-ed25519",)


def supported_kex(available: Iterable[str]) -> list[str]:
    """:data:`KEX` in order, less what ``available`` (one implementation's names) lacks."""
    have = set(available)
    return [alg for alg in KEX if alg in have]


def kex_algs() -> list[str]:
    """:data:`KEX` as far as the installed asyncssh (and its crypto libraries) can do it."""
    from asyncssh.kex import get_kex_algs

    return supported_kex(alg.decode("ascii") for alg in get_kex_algs())


def common_options() -> dict[str, Any]:
    """asyncssh connection options (client and server) for our algorithm lists."""
    return {
        "kex_algs": kex_algs(),
        "encryption_algs": list(CIPHERS),
        "mac_algs": list(MACS),
        "signature_algs": list(SIGNATURE_ALGS),
    }


def client_options() -> Mapping[str, Any]:
    """:func:`common_options` plus the host key algorithms a client accepts."""
    return MappingProxyType({**common_options(), "server_host_key_algs": list(HOST_KEY_ALGS)})
