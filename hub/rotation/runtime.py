"""The running hub's side of CA rotation: follow the state, re-key TLS, update the fleet.

Once a second the hub makes any auto-mode phase change that is due, if it holds the
cluster's ``rotation-auto`` lease (:attr:`HubRotation.may_advance`; the step is also a
compare-and-set in storage: of several hubs, one makes each step), and on every
``rotation`` change from the storage's change feed (this hub's, another hub's,
tctl's) it reloads the CAs if the state's revision moved: it signs with the
phase's CA, swaps the listener's SSLContext for new connections (trusting
every CA of the phase), and closes tunnels whose certificate a finished
rotation retired (their agents reconnect with the new one).

Every live agent that has not acknowledged the current revision gets a
``rotate`` channel, opened by the hub (messages as in ``remoteler.audit.stream``:
4-byte length + msgpack map)::

    hub   -> agent  {"t": "offer", "revision", "host_ca_pems": [pem], "user_ca_ssh": [line],
                     "client_ca_pin", "server_ca_pin"}
    agent -> hub    {"t": "request", "public_key": line, "tls": bool, "ssh": bool}
    hub   -> agent  {"t": "certs", "tls_cert": pem | None, "ssh_cert": line | None}
    agent -> hub    {"t": "done", "revision"}   (after it saved its identity)

``tls``/``ssh`` say which of the agent's certificates is not yet from the
phase's CA (tunnel certificate: the signing CA; SSH host certificate: the
serving CA). The channel is authenticated by the tunnel (the node's mTLS
certificate), so the hub certifies the key for that node id only.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import ssl
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cryptography import x509

from hub.api.tunnels import LiveNode
from hub.auth.service import host_principals
from hub.datadir import DataDir
from hub.rotation.store import CASet, RotationStore
from hub.storage.api import Change as StorageChange
from hub.storage.api import Storage
from remoteler.audit.events import EventType, make_event
from remoteler.audit.stream import MessageReader, encode_message
from remoteler.ca import CAError, public_key_from_openssh, signed_by
from remoteler.protocol import ROTATE_KIND
from remoteler.tlsutil import server_context
from remoteler.wire.aio import Tunnel
from remoteler.wire.exceptions import ChannelOpenError, TunnelClosed

if TYPE_CHECKING:
    from hub.storage.api import AuditLog, Node

__all__ = ["HubRotation", "RotationDeps"]

log = logging.getLogger("remoteler.hub.rotation")

NODE_X509_TTL = 10 * 365 * 24 * 3600
#: At most this many agents are updated at once.
PUSH_CONCURRENCY = 32
PUSH_TIMEOUT = 30.0


@dataclass(frozen=True)
class RotationDeps:
    """What CA rotation needs of the running hub, and no more (hub/app.py builds it)."""

    #: the agents' tunnels up now (``TunnelRegistry.live``)
    live: Callable[[], Iterable[LiveNode]]
    #: a node's record, for the names in its new host certificate
    get_node: Callable[[str], Awaitable[Node | None]]
    #: where phase changes and re-issued certificates are recorded
    audit: AuditLog | None
    #: new certificates (joins, logins) from these CAs' signers from now on
    use_cas: Callable[[CASet], None]
    #: new connections get this TLS context (the serving CA, every trusted CA)
    set_tls_context: Callable[[ssl.SSLContext], None]
    #: run after new CAs are in use and before the TLS context changes: the admin
    #: identity is rewritten with the phase's trusted CAs first, so tctl never meets a
    #: server certificate its identity does not trust (hub/admin/identity.py)
    before_tls: Callable[[], Awaitable[object]] | None = None


class HubRotation:
    """Create with :meth:`open` before the server (it gives the TLS context and CAs),
    then :meth:`attach` what it acts on (:class:`RotationDeps`)."""

    def __init__(
        self,
        store: RotationStore,
        data: DataDir,
        hosts: list[str],
        cas: CASet,
        rev: int,
        acks: dict[str, str],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.data = data
        self.hosts = hosts
        self.clock = clock
        self.store = store
        self.cluster = store.cluster
        self._revision = rev
        self.cas: CASet = cas
        self.acks = acks
        self.deps: RotationDeps | None = None
        self._pushing: dict[str, asyncio.Task[None]] = {}
        #: tunnel -> revision it refused or failed: not retried on that tunnel. Keyed by
        #: the tunnel itself, not id(): a reconnected agent's new tunnel may get the
        #: old one's id and would never be retried.
        self._failed: weakref.WeakKeyDictionary[Tunnel, str] = weakref.WeakKeyDictionary()
        self._slots = asyncio.Semaphore(PUSH_CONCURRENCY)
        #: whether this hub makes the auto-mode phase changes (hub/app.py: the holder of
        #: the cluster's ``rotation-auto`` lease); every hub still follows the state
        self.may_advance: Callable[[], bool] = lambda: True

    @classmethod
    async def open(
        cls,
        storage: Storage,
        data: DataDir,
        cluster: str,
        passphrase: bytes | None,
        hosts: list[str],
        clock: Callable[[], float] = time.time,
    ) -> HubRotation:
        store = RotationStore(storage, cluster, passphrase)
        cas, rev = await store.load_revision()
        return cls(store, data, hosts, cas, rev, await store.read_acks(), clock)

    # -- what the hub presents and trusts -------------------------------------

    def tls_context(self) -> ssl.SSLContext:
        cert, key = self.data.issue_server_identity(self.cas.host.server, self.hosts)
        return server_context(
            cert, key, [*self.cas.user.trusted_pems(), *self.cas.host.trusted_pems()]
        )

    def attach(self, deps: RotationDeps) -> None:
        self.deps = deps
        deps.use_cas(self.cas)

    def ping_info(self) -> dict[str, Any]:
        """Added to ``ping``: the CA the hub serves with, and every trusted one."""
        return {
            "host_ca_pem": self.cas.host.server.x509_pem.decode(),
            "host_ca_pems": [p.decode() for p in self.cas.host.trusted_pems()],
            "user_ca_pems": [p.decode() for p in self.cas.user.trusted_pems()],
            "rotation": {
                "user": self.cas.user.state.phase.value,
                "host": self.cas.host.state.phase.value,
            },
        }

    async def decorate_join(self, result: dict[str, Any], public_key: str) -> dict[str, Any]:
        """A joining node gets every trusted CA and a host certificate from the serving CA."""
        server_ca = self.cas.host.server
        if server_ca is not self.cas.host.signer:
            result["ssh_cert"] = server_ca.sign_ssh_host_cert(
                public_key_from_openssh(public_key),
                key_id=result["node_id"],
                principals=host_principals(result["node_id"], result["name"], self.cluster),
            )
        result["host_ca_pem"] = b"".join(self.cas.host.trusted_pems()).decode()
        result["user_ca_ssh"] = "\n".join(ca.ssh_public_line() for ca in self.cas.user.trusted)
        result["ca_revision"] = self.cas.revision
        self.acks[result["node_id"]] = self.cas.revision
        await self.store.ack(result["node_id"], self.cas.revision)
        return result

    # -- following the state ------------------------------------------------------

    async def run(self, interval: float = 1.0) -> None:
        """Each ``interval``, or sooner on a ``rotation`` change: advance, reload, push."""
        changes = self.store.storage.changes()
        pending: asyncio.Task[StorageChange] | None = None
        try:
            while True:
                try:
                    await self.poll()
                    self.sync_nodes()
                except Exception:
                    log.exception("rotation check failed; will retry")
                if pending is None:
                    pending = asyncio.ensure_future(anext(changes))
                done, _ = await asyncio.wait({pending}, timeout=interval)
                if done:
                    pending = None  # any change (or a gap) leads to one look at the revision
        finally:
            if pending is not None:  # the generator is running in it: end that first
                pending.cancel()
                with contextlib.suppress(BaseException):
                    await pending
            await changes.aclose()  # type: ignore[attr-defined]

    async def poll(self) -> None:
        due = await self.store.advance_due(self.clock()) if self.may_advance() else []
        for kind, change in due:
            await self._record(
                EventType.ROTATION_PHASE,
                ca_type=kind,
                phase=change.after.value,
                previous=change.before.value,
                mode="auto",
            )
        if await self.store.revision() == self._revision:
            return
        old = self.cas
        self.cas, rev = await self.store.load_revision()
        self._revision = rev  # only once loaded: a failed load is tried again next time
        if self.deps is None:
            return
        self.deps.use_cas(self.cas)
        if self.deps.before_tls is not None:
            try:
                await self.deps.before_tls()
            except Exception:  # the TLS context must still follow the CAs
                log.exception("before the TLS context change: a hook failed")
        self.deps.set_tls_context(self.tls_context())
        log.info(
            "CA rotation state loaded",
            extra={
                "user_phase": self.cas.user.state.phase.value,
                "host_phase": self.cas.host.state.phase.value,
                "revision": self.cas.revision,
            },
        )
        if old.host.trusted_pins() != self.cas.host.trusted_pins():
            await self._close_retired_tunnels()

    async def _close_retired_tunnels(self) -> None:
        """A tunnel authenticated by a CA no longer trusted ends; its agent redials."""
        assert self.deps is not None
        trusted = [ca.public_key for ca in self.cas.host.trusted]
        for live in self.deps.live():
            cert = _peer_cert(live)
            if cert is None or any(signed_by(cert, pub) for pub in trusted):
                continue
            log.info(
                "tunnel certificate from a retired CA; closing", extra={"node_id": live.node_id}
            )
            with contextlib.suppress(Exception):
                await live.tunnel.close(reason="the hub's host CA was rotated; reconnect")

    # -- updating the fleet -------------------------------------------------------

    def stale(self, live: LiveNode) -> bool:
        rev = self.cas.revision
        if self.acks.get(live.node_id) == rev or live.node_id in self._pushing:
            return False
        return self._failed.get(live.tunnel) != rev

    def sync_nodes(self) -> None:
        if self.deps is None or not any(s.state.serial for s in (self.cas.user, self.cas.host)):
            return  # never rotated: every node has what it joined with
        for live in self.deps.live():
            if self.stale(live):
                task = asyncio.ensure_future(self._push_guarded(live))
                self._pushing[live.node_id] = task
                task.add_done_callback(functools.partial(self._pushed, live.node_id))

    def _pushed(self, node_id: str, _task: asyncio.Task[None]) -> None:
        self._pushing.pop(node_id, None)

    async def _push_guarded(self, live: LiveNode) -> None:
        rev = self.cas.revision
        fields = {"node_id": live.node_id, "revision": rev}
        try:
            async with self._slots, asyncio.timeout(PUSH_TIMEOUT):
                await self.push(live)
        except (ChannelOpenError, TunnelClosed, TimeoutError, ValueError, CAError) as exc:
            log.warning("rotation update not taken: %s", type(exc).__name__, extra=fields)
            self._failed[live.tunnel] = rev
        except Exception:
            log.exception("rotation update failed", extra=fields)
            self._failed[live.tunnel] = rev

    async def push(self, live: LiveNode) -> None:
        """One ``rotate`` exchange with ``live``'s agent; raises if it does not finish."""
        assert self.deps is not None
        cas, rev = self.cas, self.cas.revision
        node = await self.deps.get_node(live.node_id)
        if node is None:
            return
        signer, server_ca = cas.host.signer, cas.host.server
        channel = await live.tunnel.open_channel(ROTATE_KIND, {"revision": rev}, timeout=15)
        try:
            reader = MessageReader()
            channel.write(
                encode_message(
                    {
                        "t": "offer",
                        "revision": rev,
                        "host_ca_pems": [p.decode() for p in cas.host.trusted_pems()],
                        "user_ca_ssh": [ca.ssh_public_line() for ca in cas.user.trusted],
                        "client_ca_pin": signer.pin(),
                        "server_ca_pin": server_ca.pin(),
                    }
                )
            )
            request = await _read_one(channel, reader, "request")
            certs: dict[str, Any] = {"t": "certs", "tls_cert": None, "ssh_cert": None}
            if request.get("tls") or request.get("ssh"):
                pub = public_key_from_openssh(str(request.get("public_key", "")))
                if request.get("tls"):
                    certs["tls_cert"] = signer.issue_x509(
                        pub,
                        common_name=node.id,
                        organization="remoteler-node",
                        usage="client",
                        ttl_seconds=NODE_X509_TTL,
                    ).decode()
                if request.get("ssh"):
                    certs["ssh_cert"] = server_ca.sign_ssh_host_cert(
                        pub,
                        key_id=node.id,
                        principals=host_principals(node.id, node.name, self.cluster),
                    )
            channel.write(encode_message(certs))
            done = await _read_one(channel, reader, "done")
            if done.get("revision") != rev:
                raise ValueError("the agent acknowledged another revision")
        finally:
            channel.close()
        for name, ca in (("tls", signer), ("ssh", server_ca)):
            if certs[f"{name}_cert"]:
                await self._record(
                    EventType.CERT_CREATE,
                    node=node.id,
                    ttl=0,
                    logins=[],
                    cert=name,
                    ca_pin=ca.pin(),
                    reason="ca rotation",
                )
        self.acks[node.id] = rev
        await self.store.ack(node.id, rev)
        log.info("node took the rotation update", extra={"node_id": node.id, "revision": rev})

    async def _record(self, type: EventType, node: str = "hub", **fields: Any) -> None:
        audit = self.deps.audit if self.deps is not None else None
        if audit is not None:
            await audit.record(make_event(type, node=node, now=self.clock(), **fields))


async def _read_one(channel: Any, reader: MessageReader, kind: str) -> dict[str, Any]:
    while data := await channel.read(65536):
        messages = reader.feed(data)
        if messages:
            message = messages[0]
            if message.get("t") != kind:
                raise ValueError(f"expected {kind!r}, got {str(message.get('t'))[:20]!r}")
            return message
    raise ValueError(f"the agent closed the rotate channel before {kind!r}")


def _peer_cert(live: LiveNode) -> x509.Certificate | None:
    ssl_object = live.tunnel.get_extra_info("ssl_object")
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if not der:
        return None
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError:
        return None
