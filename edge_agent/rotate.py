"""The agent's side of a CA rotation (see hub/rotation/runtime.py for the exchange).

The hub opens a ``rotate`` channel on the tunnel; the agent learns the CAs to
trust now, asks for the certificates it lacks, checks them, saves them
atomically and uses them at once: new SSH connections see the new host
certificate and trusted user CAs, the next tunnel dial the new x509
certificate. The process is never restarted.

An agent that was offline while a rotation finished cannot reach the hub any
more (it neither trusts the hub's new certificate nor holds one the hub
accepts): the dial's fallback (``edge_agent/clockdial.py``, which also tells a
wrong clock apart) says so and how to rejoin (:func:`rotated_offline_message`).
"""

from __future__ import annotations

import logging
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from edge_agent.identity import NodeIdentity
from remoteler.audit.stream import MessageReader, encode_message
from remoteler.ca import (
    CAError,
    parse_certificate,
    pin_of_cert_pem,
    public_key_from_openssh,
    public_key_to_openssh,
    signed_by,
    spki_pin,
    split_pem_bundle,
)
from remoteler.errors import ConfigError, HubUnreachable, RemotelerError, TrustError

log = logging.getLogger("remoteler.agent.rotate")


def rotated_offline_message(ident: NodeIdentity) -> str:
    return (
        "the hub's CA was rotated while this node was offline; join again with a new token: "
        f"on the hub run 'tctl nodes rm {ident.name}' and 'tctl tokens add --type node', "
        "then here 'edge-agent start --token-file FILE --ca-pin NEWPIN ...' with the same "
        "--data-dir (the old identity is replaced; see docs/rotation.md)"
    )


def trusted_pins(bundle: bytes) -> set[str]:
    pins = set()
    for pem in split_pem_bundle(bundle):
        try:
            pins.add(pin_of_cert_pem(pem))
        except CAError:
            continue
    return pins


def user_ca_for(cert: bytes | str, user_ca_lines: str) -> Ed25519PublicKey:
    """The trusted user CA that signed ``cert``, else the first one (which then refuses it)."""
    keys = [public_key_from_openssh(line) for line in user_ca_lines.splitlines() if line.strip()]
    try:
        signer = _raw(parse_certificate(cert).ca_public)
    except CAError:
        return keys[0]
    return next((k for k in keys if _raw(k) == signer), keys[0])


def _raw(pub: Ed25519PublicKey) -> bytes:
    return pub.public_bytes(Encoding.Raw, PublicFormat.Raw)


async def needs_rejoin(ident: NodeIdentity, hub: str, ca_pin: str) -> bool:
    """True if the hub (verified against ``ca_pin``) serves from a CA this identity lacks."""
    from remoteler.hubconn import check_pin, fetch_cluster_info

    info = await fetch_cluster_info(hub)
    actual = check_pin(info, ca_pin)
    return actual not in trusted_pins(ident.host_ca_pem)


# -- the rotate channel ---------------------------------------------------------------


async def serve_rotate_channel(channel: Any, ident: NodeIdentity) -> None:
    """Take one rotation update; ``ident`` is changed in place once it is saved."""
    reader = MessageReader()
    try:
        if ident.data_dir is None:
            raise ConfigError("this identity has no data directory to save a rotation to")
        offer = await _read_one(channel, reader, "offer")
        update = _check_offer(offer)
        pub_line = public_key_to_openssh(ident.key.public_key())
        need_tls = _x509_issuer_pin(ident.tls_cert, update["host_pems"]) != offer["client_ca_pin"]
        need_ssh = _ssh_ca_pin(ident.ssh_cert) != offer["server_ca_pin"]
        channel.write(
            encode_message(
                {"t": "request", "public_key": pub_line, "tls": need_tls, "ssh": need_ssh}
            )
        )
        certs = await _read_one(channel, reader, "certs")
        tls_cert, ssh_cert = ident.tls_cert, ident.ssh_cert
        if need_tls:
            tls_cert = str(certs.get("tls_cert") or "").encode()
            if _x509_issuer_pin(tls_cert, update["host_pems"]) != offer["client_ca_pin"]:
                raise TrustError("the new tunnel certificate is not from the offered CA")
            if _x509_key(tls_cert) != _raw(ident.key.public_key()):
                raise TrustError("the new tunnel certificate is for another key")
        if need_ssh:
            ssh_cert = str(certs.get("ssh_cert") or "")
            parsed = parse_certificate(ssh_cert)
            if (
                not parsed.signature_valid
                or parsed.cert_type != "host"
                or spki_pin(parsed.ca_public) != offer["server_ca_pin"]
                or parsed.subject_public != ident.key.public_key()
            ):
                raise TrustError("the new host certificate is not valid for this node")
        ident.tls_cert, ident.ssh_cert = tls_cert, ssh_cert
        ident.host_ca_pem = b"".join(update["host_pems"])
        ident.user_ca_ssh = "\n".join(update["user_lines"])
        ident.ca_revision = str(offer["revision"])
        ident.save_rotation(ident.data_dir)
        channel.write(encode_message({"t": "done", "revision": ident.ca_revision}))
        await channel.drain()
        log.info(
            "CA rotation update taken",
            extra={"revision": ident.ca_revision, "new_tls": need_tls, "new_ssh": need_ssh},
        )
    except (RemotelerError, CAError, ValueError, KeyError, TypeError) as exc:
        log.warning("CA rotation update refused: %s", exc)
    finally:
        channel.close()


def _check_offer(offer: dict[str, Any]) -> dict[str, Any]:
    host_pems = [str(p).encode() for p in offer["host_ca_pems"]]
    user_lines = [str(line).strip() for line in offer["user_ca_ssh"]]
    if not host_pems or not user_lines:
        raise ValueError("a rotation offer must name at least one CA of each kind")
    for line in user_lines:
        public_key_from_openssh(line)  # raises CAError on garbage
    pins = {pin_of_cert_pem(p) for p in host_pems}
    if offer["client_ca_pin"] not in pins or offer["server_ca_pin"] not in pins:
        raise ValueError("the offer's signing CAs are not among its trusted CAs")
    return {"host_pems": host_pems, "user_lines": user_lines}


def _x509_issuer_pin(cert_pem: bytes, ca_pems: list[bytes]) -> str | None:
    """The pin of the CA among ``ca_pems`` that signed ``cert_pem``, else None."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        return None
    for pem in ca_pems:
        pub = x509.load_pem_x509_certificate(pem).public_key()
        if signed_by(cert, pub):
            return spki_pin(pub)
    return None


def _x509_key(cert_pem: bytes) -> bytes | None:
    pub = x509.load_pem_x509_certificate(cert_pem).public_key()
    return _raw(pub) if isinstance(pub, Ed25519PublicKey) else None


def _ssh_ca_pin(ssh_cert: str) -> str | None:
    try:
        return spki_pin(parse_certificate(ssh_cert).ca_public)
    except CAError:
        return None


async def _read_one(channel: Any, reader: MessageReader, kind: str) -> dict[str, Any]:
    while data := await channel.read(65536):
        messages = reader.feed(data)
        if messages:
            if messages[0].get("t") != kind:
                raise ValueError(f"expected a {kind!r} message from the hub")
            return messages[0]
    raise HubUnreachable(f"the hub closed the rotate channel before {kind!r}")
