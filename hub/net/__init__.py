"""The hub's network edge: the accept loop, admission, TLS and websocket guards."""
