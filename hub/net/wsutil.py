"""Pieces shared by the two ways the hub serves ``/v1/connect``: the byte relay
(:mod:`hub.api.server`) and the recording proxy (:mod:`hub.recording.proxy`)."""

from __future__ import annotations

from typing import Any

from remoteler.text import printable
from remoteler.wire.codes import OpenFailure

#: Channel refusals whose reason comes from the device and is shown to the user
#: (forward mode: its sshd is down or refused).
DEVICE_REASONS = (OpenFailure.CONNECT_FAILED, OpenFailure.RESOURCE_SHORTAGE, OpenFailure.PROHIBITED)


def device_refusal(node_name: str, reason: str) -> str:
    """The device's own ``reason`` for the user, named after the node, as text only."""
    return f"node {node_name!r}: {printable(reason)}"


def close_reason(text: str) -> str:
    """``text`` cut to what a websocket close frame holds: 123 bytes of UTF-8 (RFC 6455
    section 5.5); a longer reason makes websockets refuse to close at all."""
    return text.encode()[:123].decode("utf-8", "ignore")


def peer_host(ws: Any) -> str:
    """The address the websocket came from, or "" if unknown."""
    try:
        return str(ws.remote_address[0])
    except (TypeError, IndexError, AttributeError):
        return ""


def peer_addr(ws: Any) -> str:
    """``host:port`` the websocket came from (for logs), or "?" if unknown."""
    try:
        host, port = ws.remote_address[:2]
    except (TypeError, ValueError, AttributeError):
        return "?"
    return f"{host}:{port}"
