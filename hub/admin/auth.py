"""``admin.auth.*``: sign user identities and host certificates, export and rotate CAs.

The CA keys stay in the hub: tctl sends a public key and gets certificates back.
Rotation changes the state in the data dir as before (hub/rotation/store.py);
the hub's follower (hub/rotation/runtime.py) applies it within a second.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from typing import Any

from hub.admin.rpc import AdminCall, AdminHandler, opt_text, text
from remoteler.addr import parse_ttl
from remoteler.admin import AdminMethod
from remoteler.audit.events import EventType
from remoteler.errors import UsageError

PHASES = ("init", "update_clients", "update_servers", "standby", "rollback")


class _CallerAudit:
    """The audit store, adding the caller's name and address to what AuthService records."""

    def __init__(self, store: Any, who: dict[str, str]) -> None:
        self._store = store
        self._who = who

    async def record(self, event: Any) -> None:
        await self._store.record(dataclasses.replace(event, fields={**event.fields, **self._who}))


async def sign_user(call: AdminCall, params: dict[str, Any]) -> Any:
    """``tctl auth sign --user NAME``: certificates for the caller's public key."""
    auth = copy.copy(call.host.auth)
    if auth.audit is not None:
        auth.audit = _CallerAudit(auth.audit, call.who())  # type: ignore[assignment]
    name = text(params, "user")
    user = await call.host.storage.users.get(name)
    if user is None:
        raise UsageError(f"no user {name!r}; create it with 'tctl users add'")
    issued = await auth.issue_user_certs(
        user, text(params, "public_key"), parse_ttl(opt_text(params, "ttl") or "12h")
    )
    return {
        "user": user.name,
        "ssh_cert": issued.ssh_cert,
        "tls_cert": issued.tls_cert,
        "expires": issued.expires,
        "host_ca_pem": b"".join(host_trusted_pems(call)).decode(),
    }


def host_trusted_pems(call: AdminCall) -> list[bytes]:
    if call.host.rotation is not None:
        pems: list[bytes] = call.host.rotation.cas.host.trusted_pems()
        return pems
    return [call.host.auth.host_ca.x509_pem]


async def sign_host(call: AdminCall, params: dict[str, Any]) -> Any:
    """``tctl auth sign --host NAME``: a host cert for a device's own sshd.

    Principals as for joined nodes (hub.auth.service.host_principals, without a node id):
    ``NAME`` for ``tsh ssh`` and ``NAME.<cluster>`` for OpenSSH through ``tsh config``.
    """
    from hub.auth.service import check_name
    from remoteler.ca import CAError, public_key_from_openssh

    name = check_name("node", text(params, "host"))
    try:
        pub = public_key_from_openssh(text(params, "public_key"))
    except CAError:
        raise UsageError(
            f"{text(params, 'pubkey_file', 'the key')} is not an Ed25519 public key; sign the "
            "sshd's ssh_host_ed25519_key.pub (ssh-keygen -t ed25519 makes one)"
        ) from None
    ttl = parse_ttl(opt_text(params, "ttl") or "365d")
    cluster = call.host.auth.cluster
    principals = [name, f"{name}.{cluster}"]
    host_ca = call.host.rotation.cas.host.server if call.host.rotation else call.host.auth.host_ca
    cert = host_ca.sign_ssh_host_cert(pub, key_id=name, principals=principals, ttl_seconds=ttl)
    await call.record(EventType.CERT_CREATE, ttl=ttl, logins=[], host=name, principals=principals)
    return {"cert": cert, "principals": principals, "expires": int(time.time()) + ttl}


async def export(call: AdminCall, params: dict[str, Any]) -> Any:
    """Lines for OpenSSH: every trusted CA of the kind (two while rotating)."""
    kind = text(params, "kind")
    if kind not in ("user", "host"):
        raise UsageError(f"bad --type {kind[:20]!r}: use user or host")
    cluster = call.host.auth.cluster
    cas = (await call.data_cas()).of(kind)
    lines = []
    for ca in cas.trusted:
        # Host CAs: the pattern 'tsh config' writes, so the CA vouches for this
        # cluster's node names (NODE.<cluster>) only, never for any host at all.
        line = ca.known_hosts_line(f"*.{cluster}") if kind == "host" else None
        lines.append(line or ca.trusted_user_ca_line())
    return {"lines": lines}


async def _advance(call: AdminCall) -> None:
    """Make (and audit) auto-mode steps that fell due (the hub's follower does too)."""
    now = time.time()
    for kind, change in await call.rotation_store.advance_due(now):
        await _record_phase(call, now, kind, change)


async def _record_phase(call: AdminCall, now: float, kind: str, change: Any) -> None:
    await call.record(
        EventType.ROTATION_PHASE,
        now=now,
        ca_type=kind,
        phase=change.after.value,
        previous=change.before.value,
        mode=change.state.mode,
    )


async def rotate(call: AdminCall, params: dict[str, Any]) -> Any:
    """Make the phase change; return what ``tctl auth rotate --format json`` prints."""
    from hub.rotation.state import Phase

    kind = text(params, "kind")
    if kind not in ("user", "host"):
        raise UsageError(f"bad --type {kind[:20]!r}: use user or host")
    phase = opt_text(params, "phase")
    store = call.rotation_store
    now = time.time()
    await _advance(call)
    if params.get("manual"):
        if not phase or phase not in PHASES:
            raise UsageError(f"--manual needs --phase, one of {', '.join(PHASES)}")
        change = await store.change(kind, Phase(phase), now, mode="manual")
    else:
        if phase:
            raise UsageError("--phase needs --manual (without it the rotation runs by itself)")
        grace = parse_ttl(text(params, "grace_period", "30h"))
        change = await store.change(kind, Phase.INIT, now, mode="auto", grace_period=grace)
    await _record_phase(call, now, kind, change)
    auth = (await store.load()).of(kind)
    return {
        "data": {
            "type": kind,
            "phase": change.after.value,
            "previous": change.before.value,
            "mode": change.state.mode,
            "ca_pin": auth.current.pin(),
            "new_ca_pin": auth.next.pin() if auth.next else None,
        },
        "grace_period": change.state.grace_period,
    }


async def rotation_info(call: AdminCall, node_ids: list[str]) -> dict[str, Any]:
    """Rotation part of ``tctl status``: each CA's phase and how many nodes caught up."""
    await _advance(call)
    store = call.rotation_store
    cas = await store.load()
    acks = await store.read_acks()
    never = not any(cas.of(k).state.serial for k in ("user", "host"))
    current = sum(1 for n in node_ids if never or acks.get(n) == cas.revision)
    return {
        "rotation": {
            kind: {
                "phase": cas.of(kind).state.phase.value,
                "mode": cas.of(kind).state.mode,
                "last": cas.of(kind).state.last,
                "trusted_pins": cas.of(kind).trusted_pins(),
            }
            for kind in ("user", "host")
        },
        "nodes_updated": current,
        "ca_pin": cas.host.server.pin(),
        "user_ca_pin": cas.user.signer.pin(),
    }


METHODS: dict[AdminMethod, AdminHandler] = {
    AdminMethod.AUTH_SIGN_USER: sign_user,
    AdminMethod.AUTH_SIGN_HOST: sign_host,
    AdminMethod.AUTH_EXPORT: export,
    AdminMethod.AUTH_ROTATE: rotate,
}
