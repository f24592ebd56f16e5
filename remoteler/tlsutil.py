"""TLS contexts for the hub's single port (mTLS with the two CA roots)."""

from __future__ import annotations

import ctypes
import logging
import ssl
import sys
import tempfile
from pathlib import Path

log = logging.getLogger("remoteler.tls")


def load_chain(ctx: ssl.SSLContext, cert_pem: bytes, key_pem: bytes) -> None:
    """Load a certificate chain and key given as PEM bytes into ``ctx``."""
    # ssl only loads key material from files: use a private temp dir, removed at once.
    with tempfile.TemporaryDirectory(prefix="remoteler-tls-") as tmp:
        cert_path = Path(tmp) / "cert.pem"
        key_path = Path(tmp) / "key.pem"
        cert_path.write_bytes(cert_pem)
        key_path.touch(mode=0o600)
        key_path.write_bytes(key_pem)
        ctx.load_cert_chain(str(cert_path), str(key_path))


#: key-exchange groups the hub accepts, in its order of preference (docs/security.md):
#: X25519 first (fast, constant-time), the NIST curves for FIPS-minded clients. No
#: finite-field groups (one ffdhe2048 operation costs 9x an X25519 one, ffdhe8192
#: 200x: 0.49 / 11.4 ms against 0.055 ms, `openssl speed` on the hub's machine, a
#: lever for a flood of ClientHellos offering only them), no X448 or P-521 (slower,
#: and no client of ours needs them).
HUB_GROUPS = ("X25519", "P-256", "P-384")

#: OpenSSL's SSL_CTX_ctrl commands (ssl.h): SSL_CTX_set1_groups_list and
#: SSL_CTX_get_min_proto_version are macros over it.
_SSL_CTRL_SET_GROUPS_LIST = 92
_SSL_CTRL_GET_MIN_PROTO_VERSION = 130
_TLS1_3_VERSION = 0x0304


def set_groups(ctx: ssl.SSLContext, groups: tuple[str, ...]) -> bool:
    """Restrict ``ctx`` to the key-exchange ``groups``; False if this Python cannot.

    Python 3.11's ssl has no ``set_groups`` (3.13 adds none either; a Python that
    has one, 3.15's gh-136306, is simply asked), and ``set_ecdh_curve`` sets
    exactly one curve (on OpenSSL 3 it replaces the group list with that curve,
    and cannot name X25519). So this calls OpenSSL's ``SSL_CTX_set1_groups_list``
    on the context's ``SSL_CTX`` through ctypes: CPython keeps that pointer right
    after the object header (``PySSLContext`` in Modules/_ssl.c, 3.8 to 3.14,
    ``object.__basicsize__`` covering debug and free-threaded headers). Only a
    real ``_ssl._SSLContext`` on CPython is read at all (``id()`` is no address
    elsewhere, and any other object's first field is no ``SSL_CTX``). Before
    writing, two values read back through the pointer must equal what the ssl
    module reports (verify mode, minimum version, the latter TLS 1.3 as set by
    :func:`server_context`), so a different layout or library is detected and
    nothing is written. The functions come from ``_ssl``'s own handle, whose
    lookup covers the libssl it is linked against (another libssl on the
    system, e.g. found by name, would not know this ``SSL_CTX``).
    """
    native = getattr(ctx, "set_groups", None)
    if callable(native):
        try:
            native(":".join(groups))
        except (ssl.SSLError, ValueError):
            return False
        return True
    try:
        import _ssl

        if sys.implementation.name != "cpython" or not isinstance(ctx, _ssl._SSLContext):
            return False
        lib = ctypes.CDLL(_ssl.__file__)  # its symbol lookup covers the libssl it uses
        ctrl = lib.SSL_CTX_ctrl
        get_verify_mode = lib.SSL_CTX_get_verify_mode
    except (ImportError, AttributeError, OSError, TypeError):
        return False
    ctrl.restype = ctypes.c_long
    ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
    get_verify_mode.restype = ctypes.c_int
    get_verify_mode.argtypes = [ctypes.c_void_p]
    ptr = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
    if not ptr:
        return False
    # SSL_VERIFY_PEER = 1, SSL_VERIFY_FAIL_IF_NO_PEER_CERT = 2 (ssl.h), as _ssl.c sets them
    expected_mode = {ssl.CERT_NONE: 0, ssl.CERT_OPTIONAL: 1, ssl.CERT_REQUIRED: 3}
    if ctx.minimum_version is not ssl.TLSVersion.TLSv1_3:
        return False  # the read-back check below relies on it
    if get_verify_mode(ptr) != expected_mode[ctx.verify_mode]:
        return False
    if ctrl(ptr, _SSL_CTRL_GET_MIN_PROTO_VERSION, 0, None) != _TLS1_3_VERSION:
        return False
    done: int = ctrl(ptr, _SSL_CTRL_SET_GROUPS_LIST, 0, ":".join(groups).encode())
    return done == 1


def server_context(cert_pem: bytes, key_pem: bytes, client_ca_pems: list[bytes]) -> ssl.SSLContext:
    """Hub context: client certificates optional (login needs none), from either CA.

    TLS 1.3 only (every client of the hub, tsh, tctl, agents and peer hubs, speaks
    it; all its suites are AEAD with ECDHE), key exchange limited to
    :data:`HUB_GROUPS` (docs/security.md).
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    load_chain(ctx, cert_pem, key_pem)
    ctx.verify_mode = ssl.CERT_OPTIONAL
    # asyncio clients cannot resume sessions, so tickets are pure cost: about
    # 0.7 ms of each handshake with OpenSSL 3.0 (bench/scale.py, reconnect storms).
    ctx.num_tickets = 0
    ctx.load_verify_locations(cadata=b"".join(client_ca_pems).decode())
    if not set_groups(ctx, HUB_GROUPS):
        log.warning(
            "cannot restrict TLS key-exchange groups with this Python/OpenSSL; "
            "OpenSSL's defaults apply (see docs/security.md)"
        )
    return ctx


def client_context(
    ca_pem: bytes | None,
    cert_pem: bytes | None = None,
    key_pem: bytes | None = None,
    alpn: list[str] | None = None,
) -> ssl.SSLContext:
    """Client context verifying the hub against ``ca_pem``.

    ``ca_pem=None`` gives an unverified context: use it only to fetch the CA
    before checking it against a pin, and send nothing secret over it.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca_pem is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        # The CA is pinned and private to this cluster; it only issues the hub's
        # serverAuth certificate, so the chain check is what matters. Hub
        # addresses are often bare IPs or NAT names, so hostnames are not checked.
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cadata=ca_pem.decode())
    if cert_pem is not None and key_pem is not None:
        load_chain(ctx, cert_pem, key_pem)
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx
