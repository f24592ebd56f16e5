"""The hub's composition root: build its services from ``hub start``'s options, start
them, own their tasks, and stop them in the reverse order.

Nothing else in the hub builds a service; ``hub/cli.py`` parses the command line,
applies the process-wide settings and calls :func:`run`. Each step of
:meth:`HubApp.start` registers its undoing on one :class:`contextlib.AsyncExitStack`
as soon as it has succeeded, so a stop, or a failure half-way (a port in use, a
database that will not open), undoes what had started, latest first: the tasks, the
server, the audit store, the sign of life, the database. The order is in
docs/architecture.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import ssl
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hub.api.server import HubServer
from hub.audit.quota import QuotaConfig
from hub.auth.hashgate import HashGate
from hub.auth.joinguard import JoinGuard
from hub.cluster.addrs import advertised, cert_hosts
from hub.cluster.member import ClusterMember
from hub.datadir import DataDir
from hub.firmware.rollouts import FirmwareRollouts
from hub.net.listener import ListenerLimits
from hub.rotation.runtime import HubRotation, RotationDeps
from hub.rotation.store import CASet
from hub.storage.api import Storage, StorageError
from remoteler.addr import format_hostport, parse_hostport
from remoteler.errors import ConfigError, UsageError

if TYPE_CHECKING:
    from hub.web.app import WebConsole

log = logging.getLogger("remoteler.hub")


def auth_limits(args: argparse.Namespace) -> tuple[HashGate, JoinGuard]:
    """The password-hash cap (and an Argon2 pool as wide) and the join limits."""
    from hub.auth import secrets as hs
    from hub.auth.hashgate import HashGate, HashGatePolicy
    from hub.auth.joinguard import JoinGuard, JoinPolicy

    max_hashes = max(1, args.max_password_hashes)
    hs.set_hash_threads(max_hashes)
    gate = HashGate(
        HashGatePolicy(max_hashes=max_hashes, max_wait=max(0.0, args.password_hash_wait))
    )
    guard = JoinGuard(
        JoinPolicy(
            address_failures=max(1, args.join_failures_per_address),
            global_failures=max(1, args.join_failures),
            address_attempts=max(1, args.join_attempts_per_address),
        )
    )
    return gate, guard


class HubApp:
    """One hub's services (``hub start ARGS``), started by :meth:`start` and stopped,
    in the reverse order, by :meth:`stop`; ``async with HubApp(args) as app`` does both.
    """

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self._stack = contextlib.AsyncExitStack()
        self.tasks: list[asyncio.Task[None]] = []
        self.server: HubServer | None = None
        #: this hub in its cluster (hub/cluster/member.py), once started
        self.member: ClusterMember | None = None
        #: ``HOST:PORT`` the hub listens on, once started
        self.addr = ""
        #: the web console (hub/web/app.py), unless ``--no-web``
        self.web: WebConsole | None = None

    async def __aenter__(self) -> HubApp:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` as a task of the hub's: cancelled (and awaited) at stop."""
        task = asyncio.ensure_future(coro)
        self.tasks.append(task)

        async def cancel() -> None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        self._stack.push_async_callback(cancel)

    async def start(self) -> None:
        """Build and start every service; on a failure, stop what had started."""
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop what :meth:`start` started, latest first (twice is harmless)."""
        await self._stack.aclose()

    async def _start(self) -> None:
        from hub.alive import alive_path, hold, keep_alive
        from hub.alive import stop as stop_alive
        from hub.auth import totp_seeds
        from hub.auth.secrets import read_passphrase
        from hub.auth.seedcrypt import SeedCipher
        from hub.auth.service import AuthService
        from hub.cluster_init import init_cluster
        from hub.gcpolicy import MIN_INTERVAL, GcPolicy
        from hub.hubid import load_hub_id
        from hub.storage.options import check_storage_args, open_hub_storage

        args, stack = self.args, self._stack
        try:
            quota = QuotaConfig(args.node_audit_rate, args.node_audit_burst)
        except ValueError as exc:
            raise UsageError(f"{exc}: fix --node-audit-rate / --node-audit-burst") from None
        if not args.audit_retention >= 0:  # NaN too
            raise UsageError("--audit-retention must be 0 (keep forever) or a number of days")
        host, port = parse_hostport(args.listen)
        data = DataDir(Path(args.data_dir), passphrase=read_passphrase(args.ca_passphrase_file))
        passphrase = data.ca_passphrase()
        check_storage_args(args, passphrase)
        seeds = SeedCipher(passphrase) if passphrase is not None else None
        # The hub's state (hub/storage, docs/storage.md); nothing else opens a database.
        storage = await open_hub_storage(args)
        stack.push_async_callback(storage.close)
        # with PostgreSQL nothing else makes it (its hub id, TLS files, admin identity);
        # not before the storage opened: bad options leave no directory behind
        data.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        hub_id = load_hub_id(data.path, args.hub_id)
        try:
            await storage.check()  # a damaged file: one line before serving (docs/tctl.md)
            # the passphrase checked on the TOTP seeds before anything is encrypted with it
            raw_users = await totp_seeds.seal(storage, seeds)
            await totp_seeds.check(raw_users, seeds)
            cluster = await init_cluster(storage, args.cluster_name, passphrase)
            # The CAs of the current rotation phase (hub/rotation/runtime.py), followed live.
            rotation = await HubRotation.open(
                storage, data, cluster, passphrase, cert_hosts(host, args.public_addr)
            )
            if migrated := await totp_seeds.migrate(raw_users, seeds):  # docs/security.md
                log.info("TOTP seeds encrypted with the CA passphrase", extra={"users": migrated})
            await storage.presence.drop_hub(hub_id)  # leases of this hub's last run
        except StorageError as exc:
            raise ConfigError(str(exc)) from None
        stack.push_async_callback(storage.presence.drop_hub, hub_id)
        user_ca, host_ca = rotation.cas.user.signer, rotation.cas.host.signer
        ssl_ctx = rotation.tls_context()
        alive = alive_path(data.path)  # tctl shows nodes online only while this is held
        alive_lock = hold(alive)
        stack.callback(stop_alive, alive, alive_lock)
        audit = storage.audit
        hash_gate, join_guard = auth_limits(args)
        server = HubServer(
            AuthService(
                storage,
                user_ca,
                host_ca,
                cluster,
                audit=audit,
                hash_gate=hash_gate,
                join_guard=join_guard,
            ),
            storage,
            audit=audit,
            listener_limits=ListenerLimits(
                tunnel_handshakes=max(1, args.max_agent_handshakes),
                tunnel_handshakes_per_addr=max(1, args.max_agent_handshakes_per_addr),
                user_handshakes_per_addr=max(1, args.max_user_handshakes_per_addr),
                max_pending_per_addr=max(1, args.max_pending_per_addr),
                tls_reply_timeout=max(0.5, args.tls_reply_timeout),
            ),
            audit_quota=quota,
            hub_id=hub_id,
        )
        self.server = server
        server.reuse_port = args.worker_index is not None  # hub start --workers (hub/workers.py)
        server.rotation = rotation  # its CAs in ping and join answers, the recording proxy's

        def use_cas(cas: CASet) -> None:
            server.auth.user_ca = cas.user.signer
            server.auth.host_ca = cas.host.signer
            if self.member is not None:  # the hub certificate follows the host CA
                self.member.cas_changed()

        def set_tls_context(ctx: ssl.SSLContext) -> None:
            if server.listener is not None:
                server.listener.ssl_ctx = ctx

        from hub.admin.identity import for_hub

        # Of `hub start --workers N` (hub/workers.py), worker 0 alone writes the data
        # dir's admin identity and address file, which tctl reads; the others share them.
        owns_files = args.worker_index in (None, 0)

        admin = for_hub(data.path, server.auth, rotation)  # DATA/admin-identity
        rotation.attach(
            RotationDeps(
                live=server.registry.live,
                get_node=storage.nodes.get,
                audit=audit,
                use_cas=use_cas,
                set_tls_context=set_tls_context,
                before_tls=admin.renew_if_due if owns_files else None,
            )
        )

        async def close_server() -> None:
            await server.close()
            with contextlib.suppress(Exception):
                await server.registry.flush()

        stack.push_async_callback(close_server)
        bound_host, bound_port = await server.start(host, port, ssl_ctx)
        addr = format_hostport(bound_host, bound_port)
        if args.web:
            await self._start_web(
                server, data, cluster, cert_hosts(host, args.public_addr), storage
            )
            server.sso = _sso_service(
                server, storage, seeds, advertised((bound_host, bound_port), args.public_addr)
            )
        if owns_files:
            await admin.renew_if_due()  # DATA/admin-identity, before hub.addr
            data.addr_file.write_text(addr + "\n")
            stack.callback(_unlink, data.addr_file)
        self.addr = addr
        # A member of the cluster of hubs on this storage (docs/cluster.md).
        member = self.member = ClusterMember(
            storage,
            hub_id,
            server.registry,
            lambda: (rotation.cas.host.server, rotation.cas.host.trusted_pems()),
            cert_hosts(host, args.public_addr),
            listener_limits=server.listener_limits,
        )
        stack.push_async_callback(member.close)
        server.peers = member.peers
        await member.start(advertised((bound_host, bound_port), args.public_addr), args.peer_listen)
        log.info(
            "hub listening",
            extra={
                "addr": addr,
                "cluster": cluster,
                "ca_pin": rotation.cas.host.server.pin(),
                "data_dir": str(data.path),
            },
        )
        self._spawn(server.registry.run_flusher())
        for loop in member.loops():
            self._spawn(loop)
        rollouts = FirmwareRollouts(storage, server.registry, audit)  # roll-outs on the storage
        self._spawn_singletons(storage, hub_id, rotation, rollouts)
        self._spawn(rollouts.run())
        self._spawn(rotation.run())
        self._spawn(keep_alive(alive))
        if owns_files:
            self._spawn(admin.run())
        gc_policy = GcPolicy(max(MIN_INTERVAL, args.gc_interval))
        if args.gc_interval > 0:
            gc_policy.install()
            stack.callback(gc_policy.uninstall)
            self._spawn(gc_policy.run())

    def _spawn_singletons(
        self, storage: Storage, hub_id: str, rotation: HubRotation, rollouts: FirmwareRollouts
    ) -> None:
        """Work one hub of the cluster does at a time, each under its lease; every hub
        runs all of them (one UPSERT per lease per 5 s). docs/storage.md "Leases"."""
        from hub import sweeps
        from hub.singleton import Singleton

        def lease(name: str) -> Singleton:
            return Singleton(storage.leases, name, hub_id)

        auto_rotation, orchestration = lease("rotation-auto"), lease("firmware-orchestration")
        rotation.may_advance = lambda: auto_rotation.held  # every hub follows the state
        rollouts.may_orchestrate = lambda: orchestration.held  # every hub runs its nodes' steps
        self._spawn(auto_rotation.run())
        self._spawn(orchestration.run())
        self._spawn(lease("presence-gc").run(lambda: sweeps.presence_gc(storage)))
        days = self.args.audit_retention
        if days > 0:  # a hub that keeps everything takes no part (docs/audit.md)
            self._spawn(
                lease("audit-retention").run(lambda: sweeps.audit_retention(storage.audit, days))
            )

    async def _start_web(
        self,
        server: HubServer,
        data: DataDir,
        cluster: str,
        hosts: list[str],
        storage: Storage,
    ) -> None:
        """The web console, /healthz, /readyz and /metrics on the same port (docs/web.md)."""
        from hub.web.app import WebConsole
        from hub.web.webtls import WebCA, operator_context, web_context

        args = self.args
        if bool(args.web_cert) != bool(args.web_key):
            raise UsageError("give --web-cert and --web-key together")
        if not args.web_idle_timeout > 0:
            raise UsageError("--web-idle-timeout must be a positive number of minutes")
        if args.web_cert:
            ctx = operator_context(args.web_cert, args.web_key)
        else:
            ctx = web_context(*WebCA(data.path, cluster).leaf(hosts))
        token = None
        if args.metrics_token_file:
            try:
                token = Path(args.metrics_token_file).read_text().strip()
            except OSError as exc:
                raise ConfigError(
                    f"cannot read --metrics-token-file {args.metrics_token_file}: "
                    f"{exc.strerror or exc}"
                ) from None
            if len(token) < 16:
                raise ConfigError("the metrics token must be at least 16 characters")
        listener = server.listener
        assert listener is not None

        async def ready() -> str | None:
            if listener.ws_server is None:
                return "the listener is not up"
            try:
                async with asyncio.timeout(2.0):
                    await storage.settings.get("cluster_name")
            except Exception as exc:  # any failure of the store is "not ready"
                return f"storage unreachable ({type(exc).__name__})"
            return None

        def dial_addr() -> str:
            sock = next(iter(listener.ws_server.sockets)) if listener.ws_server else None
            bound = sock.getsockname() if sock is not None else ("127.0.0.1", 0)
            host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(bound[0], bound[0])  # noqa: S104
            return format_hostport(host, bound[1])

        console = WebConsole(
            server,
            dial_addr,
            idle_timeout=args.web_idle_timeout * 60,
            metrics_token=token,
            ready=ready,
        )
        listener.web_factory = await console.start()
        listener.web_ctx = ctx
        self._stack.push_async_callback(console.close)
        self.web = console

    async def drain(self) -> None:
        """Tell users and agents the hub is going away (``--shutdown-grace``,
        ``--drain-spread``); :meth:`stop` then ends what is left."""
        server, args = self.server, self.args
        if server is None:
            return
        spread = args.drain_spread
        if spread is None:
            spread = min(120.0, max(5.0, len(server.registry) / 200))
        spread = min(max(spread, 1.0), 3600.0)  # a GOAWAY retry-after is at most an hour
        log.info("hub stopping")
        if self.member is not None:  # agents move to other hubs, which route to them
            await self.member.leave()
        await server.drain(args.shutdown_grace, spread)


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


async def run(args: argparse.Namespace) -> None:
    """``hub start``: start the hub, serve until SIGTERM or SIGINT, drain, stop."""
    async with HubApp(args) as app:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await app.drain()


def _sso_service(server: Any, storage: Storage, seeds: Any, public: str) -> Any:
    """Single sign-on (hub/sso, docs/sso.md): browsers come back to ``https://PUBLIC``, the
    first --public-addr (else the bound address); the identity providers must know it."""
    from hub.sso.flow import SSOService

    def seal(secret: str, name: str) -> str:
        return str(seeds.encrypt(secret, name))

    def unseal(stored: str, name: str) -> str:
        return str(seeds.decrypt(stored, name))

    return SSOService(
        storage,
        server.auth,
        lambda: f"https://{public}",
        seal_secret=seal if seeds is not None else None,
        unseal_secret=unseal if seeds is not None else None,
    )
