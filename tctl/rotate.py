"""``tctl auth rotate``: rotate the user or host CA (docs/rotation.md).

tctl changes the rotation state in the data directory under a lock; the
running hub notices within a second, re-keys its TLS port and pushes new
certificates and CAs to every connected agent.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from remoteler.errors import UsageError

if TYPE_CHECKING:
    from hub.rotation_store import CASet

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


def _data(args: argparse.Namespace) -> Any:
    from hub.datadir import DataDir

    data = DataDir(Path(args.data_dir))
    data.cluster_name()  # a clear error if this is not a hub data dir
    return data


def load_cas(data_dir: str) -> CASet:
    """The CAs as the hub uses them in the current phase."""
    from hub.datadir import DataDir
    from hub.rotation_store import RotationStore

    return RotationStore(DataDir(Path(data_dir))).load()


async def advance(data: Any) -> None:
    """Make (and audit) auto-mode steps that fell due, e.g. while no hub was running."""
    from hub.rotation_store import RotationStore

    now = time.time()
    changes = RotationStore(data).advance_due(now)
    if changes:
        await _record(data, now, list(changes))


async def _record(data: Any, now: float, changes: list[tuple[str, Any]]) -> None:
    from hub.audit_store import AuditStore, audit_db_path
    from remoteler.audit.events import HUB_NODE, EventType, make_event

    audit = await AuditStore.open(audit_db_path(data.path))
    try:
        for kind, change in changes:
            await audit.record(
                make_event(
                    EventType.ROTATION_PHASE,
                    node=HUB_NODE,
                    now=now,
                    ca_type=kind,
                    phase=change.after.value,
                    previous=change.before.value,
                    mode=change.state.mode,
                )
            )
    finally:
        await audit.close()


async def cmd_rotate(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """Make the phase change; return the JSON shape and the text to show."""
    from hub.rotation import Phase
    from hub.rotation_store import RotationStore
    from remoteler.addr import parse_ttl

    data = _data(args)
    store = RotationStore(data)
    now = time.time()
    await advance(data)  # auto steps that fell due while no hub ran
    if args.manual:
        if not args.phase:
            raise UsageError(f"--manual needs --phase, one of {', '.join(PHASES)}")
        change = store.change(args.kind, Phase(args.phase), now, mode="manual")
    else:
        if args.phase:
            raise UsageError("--phase needs --manual (without it the rotation runs by itself)")
        grace = parse_ttl(args.grace_period)
        change = store.change(args.kind, Phase.INIT, now, mode="auto", grace_period=grace)
    await _record(data, now, [(args.kind, change)])
    cas = store.load()
    auth = cas.of(args.kind)
    info = {
        "type": args.kind,
        "phase": change.after.value,
        "previous": change.before.value,
        "mode": change.state.mode,
        "ca_pin": auth.current.pin(),
        "new_ca_pin": auth.next.pin() if auth.next else None,
    }
    return info, _describe(args.kind, info, change.state.grace_period)


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


async def status_info(data_dir: str, node_ids: list[str]) -> dict[str, Any]:
    """Rotation part of ``tctl status``: each CA's phase and how many nodes caught up."""
    from hub.datadir import DataDir
    from hub.rotation_store import RotationStore

    data = DataDir(Path(data_dir))
    await advance(data)
    store = RotationStore(data)
    cas = store.load()
    acks = store.read_acks()
    never = not any(cas.of(k).state.serial for k in ("user", "host"))
    current = sum(1 for n in node_ids if never or acks.get(n) == cas.revision)
    return {
        "rotation": {
            kind: {
                "phase": cas.of(kind).state.phase.value,
                "mode": cas.of(kind).state.mode,
                "last": cas.of(kind).state.last,
                "trusted_pins": cas.of(kind).trusted_pins(),
            }
            for kind in ("user", "host")
        },
        "nodes_updated": current,
        "ca_pin": cas.host.server.pin(),
        "user_ca_pin": cas.user.signer.pin(),
    }


def status_lines(info: dict[str, Any]) -> list[str]:
    rot = info["rotation"]
    out = []
    for kind in ("user", "host"):
        r = rot[kind]
        extra = f" ({r['mode']})" if r["phase"] != "standby" else ""
        out.append(f"{kind.capitalize()} CA:  {r['phase']}{extra}")
    out.append(f"Nodes on current CA certificates: {info['nodes_updated']} of {info['nodes']}")
    return out
