"""The names both ends of a Remoteler connection must agree on, in one place:
the release, the protocol generation, the websocket subprotocols, the tunnel's
ALPN, and the kinds of channel opened on a tunnel (docs/wire-protocol.md).

No imports: an agent on a small board loads this at start-up for nothing.
"""

from __future__ import annotations

from typing import Final

#: The release of the tools (pyproject.toml's ``version``): ``--version``, the
#: agent's heartbeats, the hub's ``ping``.
VERSION: Final = "0.1.0"
#: The wire protocol generation: the ``v1`` of the subprotocols below.
PROTOCOL_VERSION: Final = 1

# -- websocket subprotocols on the hub's one TLS port ----------------------------------
#: ``/v1/tunnel``: an agent's persistent reverse tunnel (multiplexed frames).
TUNNEL_SUBPROTOCOL: Final = "remoteler.tunnel.v1"
#: ``/v1/connect``: a user's bytes to one node's SSH server, relayed.
CONNECT_SUBPROTOCOL: Final = "remoteler.connect.v1"
#: ``/v1/rpc``: requests and answers (login, ls, join, tctl's calls).
RPC_SUBPROTOCOL: Final = "remoteler.rpc.v1"

#: ALPN an agent offers on its tunnel connection, so the hub can queue agents
#: apart from users before the handshake (hub/net/listener.py). Not authentication.
TUNNEL_ALPN: Final = "remoteler-tunnel/1"
#: ALPN values that send a connection to the hub's web console (browsers, curl,
#: Prometheus); tsh, tctl and agents offer none of them (docs/web.md)
WEB_ALPNS: Final = frozenset({"http/1.1", "h2"})

# -- channel kinds on a tunnel (who opens them) -----------------------------------------
#: hub -> agent: one SSH connection to the device's server (user's session or the
#: recording proxy's login)
SSH_KIND: Final = "ssh"
#: agent -> hub: audit event batches, acked once stored
AUDIT_KIND: Final = "audit"
#: hub -> agent: new CAs and certificates during a CA rotation
ROTATE_KIND: Final = "rotate"
#: hub -> agent: the lock set, whenever it changes
LOCKS_KIND: Final = "locks"
#: hub -> agent: a firmware roll-out's bundle and progress
FIRMWARE_KIND: Final = "firmware"
#: hub -> agent: the cluster's live hubs and how many tunnels to keep
#: (:class:`remoteler.hublist.HubList`), whenever it changes and once per tunnel
HUBS_KIND: Final = "hubs"

# -- hub to hub (docs/cluster.md) ------------------------------------------------------
#: ``/v1/peer`` on a hub's ``--peer-listen`` port: one multiplexed link between two hubs
#: of a cluster (mutual TLS with hub certificates), the tunnel protocol.
PEER_SUBPROTOCOL: Final = "remoteler.peer.v1"
#: hub -> hub on a peer link: a channel to a node whose tunnel the other hub holds
#: (meta: node id, the channel kind and meta to open on the node's tunnel)
RELAY_KIND: Final = "relay"
