"""How ``tctl`` reaches the hub: its address, an admin identity, one RPC connection.

On the hub host (no ``--hub``): the address from ``DATA/hub.addr`` and the
hub's own ``DATA/admin-identity``, both written by the running hub. From any
machine: ``--hub HOST:PORT -i FILE`` with an identity from ``tctl auth sign``
whose roles grant the ``admin`` permission. tctl never opens the hub's
database or its CA keys (docs/tctl.md).
"""

from __future__ import annotations

import getpass
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from remoteler.admin import ADMIN_IDENTITY_FILE, HUB_ADDR_FILE
from remoteler.errors import ConfigError, HubUnreachable, RemotelerError, UsageError
from remoteler.identity import UserIdentity

#: Calls on one connection before tctl opens the next (the hub closes at 100).
CALLS_PER_CONNECTION = 90


@dataclass(frozen=True)
class Target:
    """Where the hub is and who tctl is to it."""

    hub: str
    identity: Path
    #: the data dir when found through it (for the "start the hub" hint)
    data_dir: Path | None


def _start_hint(data_dir: Path) -> str:
    return f"start it with 'hub start --data-dir {data_dir}'"


def find_target(data_dir: str, hub: str | None, identity: str | None) -> Target:
    """``--hub``/``-i`` if given, else the hub whose data dir is ``data_dir``."""
    if hub:
        if not identity:
            raise UsageError(
                "--hub needs -i FILE: an identity from 'tctl auth sign --user NAME' "
                "whose roles have the admin permission (e.g. role editor)"
            )
        return Target(hub, Path(identity), None)
    data = Path(data_dir)
    try:
        addr_file = data / HUB_ADDR_FILE
        if not addr_file.exists():
            if not (data / "cluster.json").exists():
                raise ConfigError(
                    f"{data} is not a hub data directory; start the hub once with "
                    f"'hub start --data-dir {data}' or pass the right --data-dir"
                )
            raise HubUnreachable(f"the hub is not running: {_start_hint(data)}")
        addr = addr_file.read_text().strip()
    except PermissionError:
        raise ConfigError(
            f"cannot read {data}: run tctl as the hub's user (or root), or use --hub and -i"
        ) from None
    return Target(addr, Path(identity) if identity else data / ADMIN_IDENTITY_FILE, data)


def load_identity(target: Target) -> UserIdentity:
    from remoteler.identity import read_identity_file

    own = target.data_dir is not None and target.identity == target.data_dir / ADMIN_IDENTITY_FILE
    if own and not target.identity.exists():
        raise ConfigError(
            f"{target.identity} is missing: the hub writes it at start; restart it with "
            f"'hub start --data-dir {target.data_dir}'"
        )
    try:
        return read_identity_file(target.identity)
    except ConfigError:  # the hub may be renewing it this instant: its files change apart
        time.sleep(0.2)
        return read_identity_file(target.identity)
    except PermissionError:
        raise ConfigError(
            f"cannot read {target.identity}: run tctl as its owner (the hub's user or root)"
        ) from None


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.geteuid())


class HubClient:
    """``admin.*`` calls over one RPC connection, opened again when the hub closes it."""

    def __init__(self, target: Target) -> None:
        from remoteler.tlsutil import client_context

        self.target = target
        ident = load_identity(target)
        if ident.valid_before <= time.time():
            raise ConfigError(
                f"the identity {target.identity} has expired: "
                + (
                    "the hub renews it while it runs; is it running?"
                    if target.data_dir is not None
                    else "write a new one with 'tctl auth sign'"
                )
            )
        self._ctx = client_context(ident.host_ca_pem, ident.tls_cert, ident.key_pem)
        self._ws: Any = None
        self._rpc: Any = None
        self._calls = 0
        self._os_user = _os_user()

    async def _open(self) -> None:
        from remoteler.hubconn import open_ws
        from remoteler.rpc import MAX_RPC_RESPONSE, SUBPROTOCOL, RpcClient

        await self.close()
        try:
            self._ws = await open_ws(
                self.target.hub,
                "/v1/rpc",
                self._ctx,
                subprotocol=SUBPROTOCOL,
                max_size=MAX_RPC_RESPONSE,
            )
        except HubUnreachable as err:
            if self.target.data_dir is None:
                raise
            raise HubUnreachable(
                f"the hub at {self.target.hub} is not answering ({err.message.split(';')[0]}); "
                f"if it is not running, {_start_hint(self.target.data_dir)}"
            ) from None
        self._rpc = RpcClient(self._ws)
        self._calls = 0

    @staticmethod
    def _typed(err: RemotelerError) -> RemotelerError:
        """A firmware refusal keeps its own exit code, as 'firmware-tools' gives it."""
        from firmware_tools.errors import BUNDLE_ERRORS

        for cls in BUNDLE_ERRORS:
            if err.message.startswith(f"{cls.refusal}: "):
                return cls(err.message)
        return err

    async def call(self, method: str, **params: Any) -> Any:
        from websockets.exceptions import ConnectionClosed
        from websockets.protocol import State

        from remoteler.rpc import RpcFormatError

        if self._rpc is None or self._calls >= CALLS_PER_CONNECTION or self._ws.state != State.OPEN:
            await self._open()  # a closed connection (idle, request cap): a new one
        self._calls += 1
        try:
            return await self._rpc.call(method, os_user=self._os_user, **params)
        except RemotelerError as err:
            if type(err) is RemotelerError:  # a code this side has no class for
                raise self._typed(err) from None
            raise
        except ConnectionClosed as exc:  # not retried: the change may have been made
            self._rpc = None
            raise HubUnreachable(
                f"the hub at {self.target.hub} closed the connection ({exc}); "
                "check with 'tctl status' whether the change was made"
            ) from None
        except RpcFormatError as exc:
            raise HubUnreachable(
                f"the hub at {self.target.hub} answered with a malformed message ({exc})"
            ) from None

    async def close(self) -> None:
        if self._ws is not None:
            ws, self._ws, self._rpc = self._ws, None, None
            await ws.close()
