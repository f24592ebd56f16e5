"""Client side of the hub's port: open websockets with the right TLS and map failures.

Every failure becomes one :class:`~remoteler.errors.RemotelerError` line that says
what to do next (hub unreachable, wrong pin, rejected certificate, HTTP refusal).
"""

from __future__ import annotations

import ssl
from typing import Any

from remoteler.addr import format_hostport, parse_hostport
from remoteler.errors import (
    HubUnreachable,
    RemotelerError,
    TrustError,
    error_from_code,
)

ERROR_HEADER = "X-Remoteler-Error"
MAX_MESSAGE = 2 << 20


async def open_ws(
    hub: str,
    path: str,
    ssl_ctx: ssl.SSLContext,
    *,
    subprotocol: str,
    timeout: float = 15.0,
    max_size: int = MAX_MESSAGE,
) -> Any:
    """Open ``wss://hub/path``; raise a one-line RemotelerError on any failure."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidHandshake, InvalidStatus

    host, port = parse_hostport(hub)
    uri = f"wss://{format_hostport(host, port)}{path}"
    try:
        return await connect(
            uri,
            ssl=ssl_ctx,
            compression=None,  # SSH bytes are incompressible; deflate costs 60x throughput
            max_size=max_size,
            open_timeout=timeout,
            ping_interval=None,  # heartbeats are ours (remoteler.wire), not websocket pings
            subprotocols=[subprotocol],  # type: ignore[list-item]
            user_agent_header=None,
            server_hostname="remoteler-hub",
        )
    except InvalidStatus as exc:
        resp = exc.response
        code = resp.headers.get(ERROR_HEADER, "error")
        body = resp.body.decode("utf-8", "replace").strip() if resp.body else ""
        raise error_from_code(
            code, body or f"hub refused the request (HTTP {resp.status_code})"
        ) from None
    except ssl.SSLCertVerificationError:
        raise TrustError(
            f"the hub at {hub} presented a certificate not signed by the trusted CA; "
            "check the address, or run 'tsh login' / rejoin if the CA was rotated"
        ) from None
    except ssl.SSLError as exc:
        raise HubUnreachable(
            f"TLS with the hub at {hub} failed ({exc.reason or exc}); "
            "check that the address is the hub's port and your certificate is current"
        ) from None
    except TimeoutError:
        raise HubUnreachable(
            f"timed out connecting to the hub at {hub}; check the address and network"
        ) from None
    except InvalidHandshake as exc:
        raise HubUnreachable(
            f"the hub at {hub} did not answer as a Remoteler hub ({exc})"
        ) from None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise HubUnreachable(
            f"cannot reach the hub at {hub}: {reason}; "
            "check the address and that the hub is running"
        ) from None


async def rpc_call(hub: str, ssl_ctx: ssl.SSLContext, method: str, **params: Any) -> Any:
    """One RPC on a fresh connection to ``/v1/rpc``."""
    from websockets.exceptions import ConnectionClosed

    from remoteler.protocol import RPC_SUBPROTOCOL
    from remoteler.rpc import MAX_RPC_RESPONSE, RpcClient, RpcFormatError

    ws = await open_ws(
        hub, "/v1/rpc", ssl_ctx, subprotocol=RPC_SUBPROTOCOL, max_size=MAX_RPC_RESPONSE
    )
    try:
        return await RpcClient(ws).call(method, **params)
    except (ConnectionClosed, RpcFormatError) as exc:
        raise HubUnreachable(f"the hub at {hub} closed the connection ({exc}); try again") from None
    finally:
        await ws.close()


async def fetch_cluster_info(hub: str) -> dict[str, Any]:
    """Ask the hub for its CAs over an unverified TLS connection: check a pin next."""
    from remoteler.tlsutil import client_context

    info = await rpc_call(hub, client_context(None), "ping")
    if not isinstance(info, dict) or not isinstance(info.get("host_ca_pem"), str):
        raise HubUnreachable(f"the server at {hub} is not a Remoteler hub")
    return info


def check_pin(info: dict[str, Any], expected: str) -> str:
    """Return the hub's actual pin; raise TrustError unless it equals ``expected``."""
    from remoteler.ca import pin_of_cert_pem

    actual = pin_of_cert_pem(info["host_ca_pem"].encode())
    if expected and actual != expected.strip().lower():
        raise TrustError(
            f"CA pin mismatch: the hub presents {actual}, expected {expected}; "
            "check the pin with 'tctl status' on the hub, nothing was sent"
        )
    return actual


__all__ = ["RemotelerError", "check_pin", "fetch_cluster_info", "open_ws", "rpc_call"]
