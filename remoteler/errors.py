"""Errors a person sees, shared by every Remoteler process.

Error tree::

    RemotelerError                 one line, says what to do next
    ├── UsageError                 bad command-line input (exit 2)
    ├── ConfigError                bad or missing local files / settings
    ├── HubUnreachable             no TCP/TLS/websocket connection to the hub
    ├── TrustError                 CA pin mismatch, unknown hub certificate
    ├── AuthError                  bad credentials, expired certificate, bad token
    ├── AccessDenied               authenticated but not allowed (names the rule)
    ├── NodeError                  unknown node or node offline
    └── HubRestarting              the hub is draining; try again in the seconds given

Wire-level violations live in :mod:`remoteler.wire.exceptions`; the RPC layer
turns remote failures into these classes by their ``code``.
"""

from __future__ import annotations


class RemotelerError(Exception):
    """Base class: ``str(err)`` is one line that tells the user what to do next."""

    code = "error"
    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(RemotelerError):
    code = "usage"
    exit_code = 2


class ConfigError(RemotelerError):
    code = "config"


class HubUnreachable(RemotelerError):
    code = "unreachable"


class TrustError(RemotelerError):
    code = "trust"


class AuthError(RemotelerError):
    code = "auth"


class AccessDenied(RemotelerError):
    code = "access_denied"


class NodeError(RemotelerError):
    code = "node"


class TunnelHeld(NodeError):
    """The hub refused a node's second tunnel to it: the first carries sessions
    (HTTP 409). An agent keeping several tunnels dials another hub instead."""

    code = "tunnel_held"


class HubRestarting(RemotelerError):
    """The hub is draining before a restart: the message says when to try again."""

    code = "restarting"


ERRORS_BY_CODE: dict[str, type[RemotelerError]] = {
    cls.code: cls
    for cls in (
        RemotelerError,
        UsageError,
        ConfigError,
        HubUnreachable,
        TrustError,
        AuthError,
        AccessDenied,
        NodeError,
        TunnelHeld,
        HubRestarting,
    )
}


def error_from_code(code: str, message: str) -> RemotelerError:
    """Rebuild a typed error received from the hub."""
    return ERRORS_BY_CODE.get(code, RemotelerError)(message)
