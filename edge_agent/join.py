"""Join: prove a token, get a host certificate and a node x509 certificate.

The hub's CA is checked against the pin *before* the token is sent; the token
then travels only over TLS verified against that pinned CA.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from edge_agent.identity import NodeIdentity
from remoteler.addr import valid_labels
from remoteler.ca import generate_private_key, public_key_to_openssh
from remoteler.errors import HubUnreachable
from remoteler.hubconn import check_pin, fetch_cluster_info, rpc_call
from remoteler.tlsutil import client_context

log = logging.getLogger("remoteler.agent.join")


async def join(
    hub: str, token: str, ca_pin: str, name: str, labels: Mapping[str, str], version: str
) -> NodeIdentity:
    info = await fetch_cluster_info(hub)
    check_pin(info, ca_pin)
    host_ca_pem = info["host_ca_pem"].encode()
    key = generate_private_key()
    result = await rpc_call(
        hub,
        client_context(host_ca_pem),
        "join",
        token=token,
        name=name,
        labels=dict(labels),
        public_key=public_key_to_openssh(key.public_key()),
        version=version,
    )
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


def _token_labels(value: object) -> dict[str, str]:
    if value is None:
        return {}
    if not valid_labels(value):
        raise HubUnreachable("the hub sent malformed token labels with the join; try again")
    assert isinstance(value, dict)
    return {str(k): str(v) for k, v in value.items()}
