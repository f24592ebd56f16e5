"""Join: prove a token, get a host certificate and a node x509 certificate.

The hub's CA is checked against the pin *before* the token is sent; the token
then travels only over TLS verified against that pinned CA (at the hub's time on
a device whose clock is off by a minute to a day: edge_agent/clockdial.py).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from edge_agent.identity import NodeIdentity
from remoteler.addr import valid_labels
from remoteler.ca import generate_private_key, public_key_to_openssh
from remoteler.clockskew import DEFAULT_MAX_SKEW, describe_skew
from remoteler.errors import HubUnreachable, TrustError
from remoteler.hubconn import check_pin, fetch_cluster_info, rpc_call
from remoteler.tlsutil import client_context

log = logging.getLogger("remoteler.agent.join")

#: seconds one join attempt (ping, then the join RPC) may take before it counts as
#: a lost link and is tried again
JOIN_DEADLINE = 60.0


async def join_until_done(
    attempt: Callable[[], Awaitable[NodeIdentity]],
    hub: str,
    delay: Callable[[int, random.Random], float],
    rng: random.Random | None = None,
    deadline: float = JOIN_DEADLINE,
) -> NodeIdentity:
    """Run ``attempt`` (one :func:`join`) until it succeeds, as a device booting
    before its modem is up needs: a hub that cannot be reached, times out or drops
    the connection is tried again after ``delay(attempt_number, rng)`` seconds (the
    tunnel's backoff), with one warning line per try. Every other error is final
    (token refused or used, pin mismatch, name taken): no retry changes it.
    """
    rng = rng or random.Random()
    tries = 0
    while True:
        try:
            async with asyncio.timeout(deadline):
                return await attempt()
        except TimeoutError:
            err: HubUnreachable = HubUnreachable(
                f"the hub at {hub} did not finish the join within {deadline:.0f} s"
            )
        except HubUnreachable as exc:
            err = exc
        wait = delay(tries, rng)
        tries += 1
        log.warning("cannot join yet (%s); trying again in %.1f s", err, wait)
        await asyncio.sleep(wait)


async def join(
    hub: str,
    token: str,
    ca_pin: str,
    name: str,
    labels: Mapping[str, str],
    version: str,
    max_skew: float = DEFAULT_MAX_SKEW,
) -> NodeIdentity:
    sent = time.time()
    info = await fetch_cluster_info(hub)
    received = time.time()
    check_pin(info, ca_pin)
    host_ca_pem = info["host_ca_pem"].encode()
    key = generate_private_key()
    params: dict[str, Any] = {
        "token": token,
        "name": name,
        "labels": dict(labels),
        "public_key": public_key_to_openssh(key.public_key()),
        "version": version,
    }
    try:
        result = await rpc_call(hub, client_context(host_ca_pem), "join", **params)
    except TrustError as err:  # a device without a real-time clock? (edge_agent/clockdial.py)
        result = await _join_at_hub_time(hub, info, sent, received, err, max_skew, params)
    if not isinstance(result, dict) or "node_id" not in result:
        raise HubUnreachable("the hub answered the join with something unexpected; try again")
    ident = NodeIdentity(
        key=key,
        node_id=result["node_id"],
        name=result["name"],
        hub=hub,
        ssh_cert=result["ssh_cert"],
        tls_cert=result["tls_cert"].encode(),
        host_ca_pem=result["host_ca_pem"].encode(),
        user_ca_ssh=result["user_ca_ssh"],
        cluster=result.get("cluster", ""),
        token_labels=_token_labels(result.get("token_labels")),
    )
    log.info("joined", extra={"node_id": ident.node_id, "node_name": ident.name, "hub": hub})
    return ident


async def _join_at_hub_time(
    hub: str,
    info: dict[str, Any],
    sent: float,
    received: float,
    err: TrustError,
    max_skew: float,
    params: dict[str, Any],
) -> Any:
    """The join RPC over a connection whose certificate was checked at the hub's time
    (the CA is the pinned one); the token is sent only after that check."""
    from websockets.exceptions import ConnectionClosed

    from edge_agent.clockdial import open_at_hub_time, skew_from_ping
    from remoteler.protocol import RPC_SUBPROTOCOL
    from remoteler.rpc import MAX_RPC_RESPONSE, RpcClient, RpcFormatError

    estimate = skew_from_ping(info, sent, received, err, max_skew)
    log.warning("joining despite the clock: %s", describe_skew(estimate.skew))
    ws = await open_at_hub_time(
        hub,
        "/v1/rpc",
        info["host_ca_pem"].encode(),
        estimate,
        subprotocol=RPC_SUBPROTOCOL,
        max_size=MAX_RPC_RESPONSE,
    )
    try:
        return await RpcClient(ws).call("join", **params)
    except (ConnectionClosed, RpcFormatError) as exc:
        raise HubUnreachable(f"the hub at {hub} closed the connection ({exc}); try again") from None
    finally:
        await ws.close()


def _token_labels(value: object) -> dict[str, str]:
    if value is None:
        return {}
    if not valid_labels(value):
        raise HubUnreachable("the hub sent malformed token labels with the join; try again")
    assert isinstance(value, dict)
    return {str(k): str(v) for k, v in value.items()}
