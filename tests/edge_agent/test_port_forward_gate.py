"""The device's port forwarding decision, without sockets."""

from __future__ import annotations

import socket
from typing import Any

import asyncssh
import pytest

from edge_agent.authz import PERMISSIONS_INFO
from edge_agent.forward import ForwardGate, forward_refusal
from remoteler.access import NO_PERMISSIONS, Permissions

ALLOWED = Permissions(port_forwarding=True)


def test_allowed_when_certificate_and_rules_agree() -> None:
    assert forward_refusal(ALLOWED, True, "pi", "127.0.0.1", 80) is None
    assert forward_refusal(ALLOWED, True, "pi", "plc.local", 65535) is None


def test_refused_without_the_certificate_extension() -> None:
    reason = forward_refusal(ALLOWED, False, "pi", "127.0.0.1", 80)
    assert reason is not None and "port_forwarding = false" in reason


def test_refused_when_the_rules_do_not_grant_it_here() -> None:
    reason = forward_refusal(Permissions(file_transfer=True), True, "pi", "127.0.0.1", 80)
    assert reason == "port forwarding is not permitted for login 'pi' on this node by your roles"


@pytest.mark.parametrize(("host", "port"), [("", 80), ("h", 0), ("h", 65536), ("h", 2**32 - 1)])
def test_refused_for_a_bad_destination(host: str, port: int) -> None:
    assert forward_refusal(ALLOWED, True, "pi", host, port) is not None


class _Conn:
    """The few asyncssh connection methods the gate uses."""

    def __init__(self, perms: Permissions, cert_permits: bool) -> None:
        self.extra: dict[str, Any] = {PERMISSIONS_INFO: perms, "remoteler_user": "alice"}
        self.cert_permits = cert_permits

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.extra.get(name, default)

    def check_certificate_permission(self, permission: str) -> bool:
        return self.cert_permits if permission == "port-forwarding" else False


def test_gate_takes_over_asyncssh_certificate_check_and_refuses_with_a_reason() -> None:
    conn = _Conn(ALLOWED, cert_permits=False)
    gate = ForwardGate(conn, None, "s1")
    # asyncssh's own check now passes, so the request reaches the gate ...
    assert conn.check_certificate_permission("port-forwarding") is True
    assert conn.check_certificate_permission("pty") is False
    # ... which still applies the certificate's extension, with a reason.
    with pytest.raises(asyncssh.ChannelOpenError) as refused:
        gate.open("pi", "127.0.0.1", 80)
    assert refused.value.code == asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED
    assert "certificate" in refused.value.reason


def test_gate_refuses_a_connection_without_a_decision() -> None:
    conn = _Conn(NO_PERMISSIONS, cert_permits=True)
    with pytest.raises(asyncssh.ChannelOpenError):
        ForwardGate(conn, None, "s1").open("pi", "127.0.0.1", 80)


async def test_unreachable_destination_is_connect_failed_with_the_device_error() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(asyncssh.ChannelOpenError) as failed:
        await ForwardGate(_Conn(ALLOWED, True), None, "s1").open("pi", "127.0.0.1", port)
    assert failed.value.code == asyncssh.OPEN_CONNECT_FAILED
    assert failed.value.reason.startswith(f"the node cannot connect to 127.0.0.1 port {port}: ")
