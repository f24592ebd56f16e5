"""Reach the hub although this device's clock is wrong (docs/tunnels.md, "Clock skew").

The normal dial verifies the hub's certificate with OpenSSL against the system
clock. On a device whose clock is far behind (no RTC, booted in 1970 or last
month) the hub's CA or certificate is "not yet valid"; far ahead, "expired".
When that dial fails verification, :func:`dial_despite_clock`:

1. asks the hub's ``ping`` RPC for its CA and time over an unverified connection
   (nothing secret is sent), measuring the round trip: the skew, within RTT/2;
2. if the hub now serves from a CA this node does not trust, says how to rejoin
   (a rotation while offline, edge_agent/rotate.py);
3. if the skew is under a minute, the clock is not the cause: the first error stands;
4. beyond the bound (24 h by default), refuses with the skew named;
5. within it, dials again without OpenSSL's check and verifies the hub's
   certificate itself (:func:`check_hub_cert`: signed by a trusted host CA,
   serverAuth, CA and certificate valid at hub-corrected time) before the
   tunnel carries a single frame.

The ping's time is unauthenticated, so the bound is what limits a forger: at
worst a hub certificate that expired less than the bound ago is accepted.
The agent never takes that time as its skew: heartbeat answers on the verified
tunnel are the only source of it (edge_agent/agent.py).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from edge_agent.clock import HubClock
from edge_agent.identity import NodeIdentity
from remoteler.ca import CAError, pin_of_cert_pem, signed_by, split_pem_bundle
from remoteler.clockskew import (
    REPORT_THRESHOLD,
    SkewSample,
    describe_skew,
    human_span,
    sample,
    within,
)
from remoteler.errors import ConfigError, RemotelerError, TrustError

__all__ = ["check_hub_cert", "dial_despite_clock", "open_at_hub_time", "skew_from_ping"]


def check_hub_cert(der: bytes, trusted_pems: bytes, at: float) -> None:
    """Raise CAError unless ``der`` is a hub (serverAuth) certificate signed by one
    of the ``trusted_pems`` CA roots, both valid at ``at`` (unix seconds)."""
    try:
        leaf = x509.load_der_x509_certificate(der)
    except ValueError:
        raise CAError("the hub's certificate is unreadable") from None
    when = datetime.fromtimestamp(at, UTC)
    for pem in split_pem_bundle(trusted_pems):
        try:
            ca = x509.load_pem_x509_certificate(pem)
        except ValueError:
            continue
        if leaf.issuer != ca.subject or not signed_by(leaf, ca.public_key()):
            continue
        for cert, what in ((ca, "the hub's CA"), (leaf, "the hub's certificate")):
            if not cert.not_valid_before_utc <= when <= cert.not_valid_after_utc:
                raise CAError(f"{what} is not valid at the hub's time")
        try:
            usage = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            raise CAError("the hub's certificate has no extended key usage") from None
        if ExtendedKeyUsageOID.SERVER_AUTH not in usage:
            raise CAError("the certificate is not a hub's (no serverAuth)")
        return
    raise CAError("the hub's certificate is not signed by the trusted CA")


def skew_from_ping(
    info: dict[str, Any], sent: float, received: float, err: RemotelerError, bound: float
) -> SkewSample:
    """The skew the hub's ``ping`` answer shows, if the clock explains ``err``:
    re-raise ``err`` when it does not (an older hub, or a skew under a minute),
    raise a TrustError naming the skew when it is beyond ``bound``."""
    hub_time = info.get("time")
    estimate = None
    if isinstance(hub_time, (int, float)) and not isinstance(hub_time, bool):
        estimate = sample(sent, received, hub_time)
    if estimate is None or abs(estimate.skew) < REPORT_THRESHOLD:
        raise err  # an older hub, or the clock is right: something else is wrong
    if not within(estimate.skew, bound):
        raise TrustError(
            f"cannot verify the hub's certificate: {describe_skew(estimate.skew)}, more than "
            f"the {human_span(bound)} this agent corrects for (--max-clock-skew); "
            "set the clock (NTP, or 'date -s') and try again"
        )
    return estimate


async def open_at_hub_time(
    hub: str,
    path: str,
    trusted_pems: bytes,
    estimate: SkewSample,
    *,
    subprotocol: str,
    cert_pem: bytes | None = None,
    key_pem: bytes | None = None,
    alpn: list[str] | None = None,
    timeout: float = 15.0,
    max_size: int | None = None,
) -> Any:
    """``wss://hub/path`` with the hub's certificate checked by :func:`check_hub_cert`
    at hub-corrected time (``estimate``) instead of by OpenSSL at the local time.

    Only the websocket upgrade (path, no secret) is sent before the check; the
    caller sends nothing until this returns.
    """
    from remoteler.hubconn import MAX_MESSAGE, open_ws
    from remoteler.tlsutil import client_context

    ctx = client_context(None, cert_pem, key_pem, alpn)  # the certificate is checked below
    ws = await open_ws(
        hub, path, ctx, subprotocol=subprotocol, timeout=timeout, max_size=max_size or MAX_MESSAGE
    )
    ssl_object = ws.transport.get_extra_info("ssl_object")
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    try:
        check_hub_cert(der or b"", trusted_pems, time.time() - estimate.skew)
    except CAError as exc:
        await ws.close()
        raise TrustError(
            f"the hub at {hub} presented a certificate this node cannot trust ({exc}) "
            f"even at the hub's time ({describe_skew(estimate.skew)}); check the address"
        ) from None
    return ws


async def dial_despite_clock(
    ident: NodeIdentity,
    clock: HubClock,
    err: TrustError,
    path: str,
    *,
    timeout: float,
    max_size: int,
    hub: str | None = None,
) -> tuple[Any, SkewSample]:
    """The tunnel websocket and the skew it was verified at, after a dial that failed
    certificate verification (``err``); raise a one-line RemotelerError that names
    the skew if it is why. The caller takes the skew (:meth:`HubClock.observe`).
    ``hub``: the address dialled (default: the identity's)."""
    from edge_agent.rotate import rotated_offline_message, trusted_pins
    from remoteler.hubconn import fetch_cluster_info
    from remoteler.protocol import TUNNEL_ALPN, TUNNEL_SUBPROTOCOL

    hub = hub or ident.hub
    sent = time.time()
    try:
        info = await fetch_cluster_info(hub)
        hub_pin = pin_of_cert_pem(str(info["host_ca_pem"]).encode())
    except (RemotelerError, CAError, KeyError):
        raise err from None
    received = time.time()
    if hub_pin not in trusted_pins(ident.host_ca_pem):
        raise ConfigError(rotated_offline_message(ident))
    estimate = skew_from_ping(info, sent, received, err, clock.bound)
    ws = await open_at_hub_time(
        hub,
        path,
        ident.host_ca_pem,
        estimate,
        subprotocol=TUNNEL_SUBPROTOCOL,
        cert_pem=ident.tls_cert,
        key_pem=ident.key_pem,
        alpn=[TUNNEL_ALPN],
        timeout=timeout,
        max_size=max_size,
    )
    return ws, estimate
