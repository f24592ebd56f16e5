"""The hub's endpoints on its one TLS port (rpc, tunnel, connect) and the live tunnels."""
