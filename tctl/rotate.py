"""``tctl auth rotate``: rotate the user or host CA (docs/rotation.md).

The hub changes the rotation state (``admin.auth.rotate``, hub/admin/auth.py),
re-keys its TLS port within a second and pushes new certificates and CAs to
every connected agent.
"""

from __future__ import annotations

import argparse
from typing import Any

from remoteler.admin import AdminMethod
from tctl.hubclient import HubClient

PHASES = ("init", "update_clients", "update_servers", "standby", "rollback")


def add_rotate_parser(authp: Any) -> None:
    """Register ``tctl auth rotate`` on the ``auth`` subcommands."""
    rot = authp.add_parser("rotate", help="rotate the user or host CA (docs/rotation.md)")
    rot.add_argument("--type", choices=["user", "host"], required=True, dest="kind")
    rot.add_argument(
        "--grace-period",
        default="30h",
        help="auto mode: time from init to the end, when old certificates stop working "
        "(default 30h)",
    )
    rot.add_argument("--manual", action="store_true", help="move one phase at a time")
    rot.add_argument(
        "--phase",
        choices=PHASES,
        help="with --manual: the phase to move to (default: none, automatic)",
    )
    rot.add_argument("--format", choices=["text", "json"], default="text")


async def cmd_rotate(args: argparse.Namespace, hub: HubClient) -> tuple[dict[str, Any], str]:
    """Ask the hub for the phase change; return the JSON shape and the text to show."""
    out = await hub.call(
        AdminMethod.AUTH_ROTATE,
        kind=args.kind,
        manual=args.manual,
        phase=args.phase,
        grace_period=args.grace_period,
    )
    info: dict[str, Any] = out["data"]
    return info, _describe(args.kind, info, float(out["grace_period"]))


_NEXT = {
    "init": "update_clients",
    "update_clients": "update_servers",
    "update_servers": "standby",
    "rollback": "standby",
}


def _describe(kind: str, info: dict[str, Any], grace: float) -> str:
    phase = info["phase"]
    lines = [f"{kind.capitalize()} CA rotation: phase {info['previous']} -> {phase}."]
    if phase == "standby" and info["previous"] == "update_servers":
        lines.append(f"Rotation complete. New CA pin: {info['ca_pin']}")
        lines.append(
            "Certificates from the old CA are now refused; users run 'tsh login' again and "
            "agents that were offline must rejoin (docs/rotation.md)."
        )
    elif phase == "standby":
        lines.append(f"Rolled back; the CA is still {info['ca_pin']}")
    elif info["mode"] == "auto":
        lines.append(
            f"Runs by itself: each phase lasts {int(grace // 3)}s, the old CA is "
            f"dropped after {int(grace)}s. New CA pin: {info['new_ca_pin']}"
        )
    else:
        lines.append(
            f"Next: tctl auth rotate --type {kind} --manual --phase {_NEXT[phase]} "
            "(or --phase rollback)"
        )
        if info["new_ca_pin"]:
            lines.append(f"New CA pin: {info['new_ca_pin']}")
    return "\n".join(lines)


def status_lines(info: dict[str, Any]) -> list[str]:
    rot = info["rotation"]
    out = []
    for kind in ("user", "host"):
        r = rot[kind]
        extra = f" ({r['mode']})" if r["phase"] != "standby" else ""
        out.append(f"{kind.capitalize()} CA:  {r['phase']}{extra}")
    out.append(f"Nodes on current CA certificates: {info['nodes_updated']} of {info['nodes']}")
    return out
