"""``admin.*`` methods for users, join tokens, nodes, roles, locks and ``status``.

Each returns what ``tctl ... --format json`` prints (docs/tctl.md); tctl makes
its text from the same data. Storage calls are the hub's own (``Backend``).
"""

from __future__ import annotations

import time
from typing import Any

from hub.admin.rpc import AdminCall, AdminHandler, opt_text, text
from hub.cluster.directory import CONNECTION_COUNT_KEY, effective_count, parse_count
from remoteler.addr import parse_labels, parse_ttl
from remoteler.admin import AdminMethod
from remoteler.audit.events import EventType
from remoteler.errors import UsageError

#: How long an invite printed by ``tctl users add`` stays valid (hub/auth/service.py).
INVITE_TTL = 24 * 3600


async def users_add(call: AdminCall, params: dict[str, Any]) -> Any:
    from hub.auth.secrets import totp_uri

    auth = call.host.auth
    roles = [r for r in text(params, "roles", "access").split(",") if r]
    logins = [x for x in text(params, "logins", "").split(",") if x]
    user, invite = await auth.add_user(
        text(params, "name"),
        roles,
        logins,
        opt_text(params, "password"),
        opt_text(params, "totp_secret"),
    )
    await call.changed("user.add", user.name, roles=list(user.roles), logins=list(user.logins))
    data: dict[str, Any] = {
        "user": user.name,
        "roles": list(user.roles),
        "logins": list(user.logins),
    }
    if invite:
        data["invite"] = invite
        data["invite_expires"] = int(time.time()) + INVITE_TTL
        # The pin lets the invitee check the hub on first contact (no trust on first use).
        data["ca_pin"] = (await call.data_cas()).host.server.pin()
    else:
        assert user.totp_secret is not None
        data["totp_uri"] = totp_uri(user.totp_secret, user.name, auth.cluster)
    return {"data": data, "hub": call.hub_addr()}


async def users_ls(call: AdminCall, params: dict[str, Any]) -> Any:
    now = time.time()
    return [
        {
            "name": u.name,
            "roles": list(u.roles),
            "logins": list(u.logins),
            # SSO users (docs/sso.md): made at login, gone when their certificates end
            "connector": u.connector,
            "expires": int(u.expires) if u.expires is not None else None,
        }
        for u in await call.host.storage.users.all()
        if u.expires is None or u.expires > now
    ]


async def users_rm(call: AdminCall, params: dict[str, Any]) -> Any:
    name = text(params, "name")
    if not await call.host.storage.users.delete(name):
        raise UsageError(f"no user {name!r}; see 'tctl users ls'")
    await call.changed("user.rm", name)
    return {"user": name}


async def users_unlock(call: AdminCall, params: dict[str, Any]) -> Any:
    name = text(params, "name")
    storage = call.host.storage
    if await storage.users.get(name) is None:
        raise UsageError(f"no user {name!r}; see 'tctl users ls'")
    cleared = await storage.login_guards.clear(name)
    await call.changed("user.unlock", name, was_locked_out=cleared)
    return {"user": name, "cleared": cleared}


async def tokens_add(call: AdminCall, params: dict[str, Any]) -> Any:
    ttl = parse_ttl(text(params, "ttl", "1h"))
    token, rec = await call.host.auth.add_token(
        text(params, "kind", "node"), ttl, parse_labels(text(params, "labels", ""))
    )
    await call.changed("token.add", rec.token_id, kind=rec.kind, expires=rec.expires)
    return {
        "token": token,
        "token_id": rec.token_id,
        "type": rec.kind,
        "expires": int(rec.expires),
        "labels": dict(rec.labels),
        "ca_pin": (await call.data_cas()).host.server.pin(),  # what the hub serves
        "hub": call.hub_addr(),
    }


async def tokens_ls(call: AdminCall, params: dict[str, Any]) -> Any:
    now = time.time()
    return [
        {
            "token_id": t.token_id,
            "type": t.kind,
            "labels": dict(t.labels),
            "expires": int(t.expires),
            "state": "used" if t.used_by else ("expired" if t.expires <= now else "valid"),
        }
        for t in await call.host.storage.tokens.all()
    ]


async def tokens_rm(call: AdminCall, params: dict[str, Any]) -> Any:
    token_id = text(params, "token_id")
    if not await call.host.storage.tokens.delete(token_id):
        raise UsageError(f"no token with id {token_id!r}; see 'tctl tokens ls'")
    await call.changed("token.rm", token_id)
    return {"token_id": token_id}


async def nodes_ls(call: AdminCall, params: dict[str, Any]) -> Any:
    return [
        {
            "id": n.id,
            "name": n.name,
            "labels": dict(n.labels),
            "online": n.online,
            "last_seen": n.last_seen,
            "version": n.version,
            "audit_pending": n.audit_pending,
            "audit_oldest": n.audit_oldest,
            "recording": n.recording,
            "clock_skew": n.clock_skew,
            "caps": list(n.caps),  # what its agent supports (remoteler/caps.py)
            # the hubs holding a live tunnel of the node (docs/cluster.md)
            "hubs": sorted(n.held_by),
        }
        for n in await call.host.storage.nodes.all()
    ]


async def nodes_rm(call: AdminCall, params: dict[str, Any]) -> Any:
    name = text(params, "name")
    node = await call.host.storage.nodes.get(name)
    if node is None or not await call.host.storage.nodes.delete(name):
        raise UsageError(f"no node {name!r}; see 'tctl nodes ls'")
    await call.changed("node.rm", node.name, node_id=node.id)
    return {"node": node.name}


async def nodes_set(call: AdminCall, params: dict[str, Any]) -> Any:
    """``tctl nodes set NAME --recording proxy|off``: applies to the next connection."""
    mode = text(params, "recording")
    if mode not in ("off", "proxy"):
        raise UsageError(f"bad --recording {mode[:20]!r}: use off or proxy")
    name = text(params, "name")
    node = await call.host.storage.nodes.set_recording(name, mode)
    if node is None:
        raise UsageError(f"no node {name!r}; see 'tctl nodes ls'")
    await call.record(
        EventType.NODE_UPDATED, name=node.name, node_id=node.id, recording=node.recording
    )
    return {"node": node.name, "recording": node.recording}


async def roles_put(call: AdminCall, params: dict[str, Any]) -> Any:
    """``tctl create -f FILE``: the file's text, parsed here as hub/auth/roles.py reads files."""
    from hub.auth.roles import load_role_text

    role = load_role_text(text(params, "text"), text(params, "file", "role file"))
    storage = call.host.storage
    existed = await storage.roles.get(role.name) is not None
    await storage.roles.put(role)
    await call.record(EventType.ROLE_CREATED, name=role.name, spec=role.to_dict(), updated=existed)
    return {"role": role.name, "updated": existed}


async def roles_ls(call: AdminCall, params: dict[str, Any]) -> Any:
    return [r.to_dict() for r in await call.host.storage.roles.all()]


async def roles_rm(call: AdminCall, params: dict[str, Any]) -> Any:
    from remoteler.access import PRESET_ROLES

    name = text(params, "name")
    if name in {r.name for r in PRESET_ROLES}:
        raise UsageError(
            f"role {name!r} is a preset and comes back at the next start; "
            "change it with 'tctl create -f' instead"
        )
    storage = call.host.storage
    if not await storage.roles.delete(name):
        raise UsageError(f"no role {name!r}; see 'tctl get roles'")
    users = [u.name for u in await storage.users.all() if name in u.roles]
    await call.record(EventType.ROLE_DELETED, name=name)
    return {"role": name, "users": users}


def _lock_item(lock: Any) -> dict[str, Any]:
    return {
        "id": lock.id,
        "kind": lock.kind,
        "target": lock.target,
        "message": lock.message,
        "created": int(lock.created),
        "expires": None if lock.expires is None else int(lock.expires),
    }


async def locks_add(call: AdminCall, params: dict[str, Any]) -> Any:
    from hub.auth.locks import new_lock_id
    from remoteler.locks import KINDS, MAX_MESSAGE, Lock

    kind = text(params, "kind")
    if kind not in KINDS:
        raise UsageError(f"bad lock kind {kind[:20]!r}: use {', '.join(KINDS)}")
    target = text(params, "target")
    message = text(params, "message", "")
    if not target.strip():
        raise UsageError(f"give a {kind} name to lock")
    if len(message) > MAX_MESSAGE:
        raise UsageError(f"--message is too long: at most {MAX_MESSAGE} characters")
    ttl = opt_text(params, "ttl")
    now = time.time()
    expires = now + parse_ttl(ttl) if ttl else None
    storage = call.host.storage
    if kind == "node":
        node = await storage.nodes.get(target)
        if node is None:
            raise UsageError(f"no node {target!r}; see 'tctl nodes ls'")
        target = node.name
    lock = Lock(new_lock_id(), kind, target, message, now, expires, f"tctl:{call.caller.name}")
    await storage.locks.add(lock)
    await call.record(
        EventType.LOCK_CREATED,
        user=target if kind == "user" else "",
        login=target if kind == "login" else "",
        now=now,
        lock_id=lock.id,
        kind=kind,
        target=target,
        message=lock.message,
        expires=lock.expires,
    )
    return _lock_item(lock)


async def locks_ls(call: AdminCall, params: dict[str, Any]) -> Any:
    return [_lock_item(lock) for lock in await call.host.storage.locks.all(time.time())]


async def locks_rm(call: AdminCall, params: dict[str, Any]) -> Any:
    lock_id = text(params, "lock_id").strip()
    lock = await call.host.storage.locks.delete(lock_id)
    if lock is None:
        raise UsageError(f"no lock with id {lock_id!r}; see 'tctl locks ls'")
    await call.record(EventType.LOCK_DELETED, lock_id=lock.id, kind=lock.kind, target=lock.target)
    return _lock_item(lock)


async def status(call: AdminCall, params: dict[str, Any]) -> Any:
    from hub.admin.auth import rotation_info

    nodes = await call.host.storage.nodes.all()
    now = time.time()
    hubs = [
        {
            "id": h.id,
            "addr": h.public_addr,
            "peer_addr": h.peer_addr,
            "agents": h.agents,
            "lease_age": round(max(0.0, now - h.beat_at), 1),
            "version": h.version,
            "started": h.started,
        }
        for h in await call.host.storage.hubs.live(now)
    ]
    configured = parse_count(await call.host.storage.settings.get(CONNECTION_COUNT_KEY))
    return {
        "cluster": call.host.auth.cluster,
        "hub": call.hub_addr(),
        "hub_id": call.host.hub_id,
        "hubs": hubs,
        # tunnels each agent keeps, and whether it is the setting or the default
        "agent_connections": effective_count(configured, len(hubs)),
        "agent_connections_set": configured is not None,
        "nodes": len(nodes),
        "nodes_online": sum(1 for n in nodes if n.online),
        # ca_pin, user_ca_pin, rotation, nodes_updated
        **await rotation_info(call, [n.id for n in nodes]),
    }


METHODS: dict[AdminMethod, AdminHandler] = {
    AdminMethod.USERS_ADD: users_add,
    AdminMethod.USERS_LS: users_ls,
    AdminMethod.USERS_RM: users_rm,
    AdminMethod.USERS_UNLOCK: users_unlock,
    AdminMethod.TOKENS_ADD: tokens_add,
    AdminMethod.TOKENS_LS: tokens_ls,
    AdminMethod.TOKENS_RM: tokens_rm,
    AdminMethod.NODES_LS: nodes_ls,
    AdminMethod.NODES_RM: nodes_rm,
    AdminMethod.NODES_SET: nodes_set,
    AdminMethod.ROLES_PUT: roles_put,
    AdminMethod.ROLES_LS: roles_ls,
    AdminMethod.ROLES_RM: roles_rm,
    AdminMethod.LOCKS_ADD: locks_add,
    AdminMethod.LOCKS_LS: locks_ls,
    AdminMethod.LOCKS_RM: locks_rm,
    AdminMethod.STATUS: status,
}
