"""``tctl firmware trust|untrust|push|stop|status``: firmware roll-outs (docs/firmware-rollouts.md).

``push`` uploads the bundle to the hub in chunks (``admin.firmware.upload``);
the hub verifies it against the keys it trusts, keeps it in its data dir and
starts the roll-out (hub/admin/firmware.py, hub/firmware/rollouts.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from remoteler.admin import UPLOAD_CHUNK, AdminMethod
from remoteler.errors import UsageError
from remoteler.textfmt import fmt_time, table
from tctl.hubclient import HubClient

Handler = Callable[[argparse.Namespace, HubClient], Coroutine[Any, Any, None]]

DEFAULT_PARALLEL = 10


def register(sub: Any) -> dict[str, Handler]:
    """Add ``tctl firmware ...`` to tctl's subparsers; return its handler by group."""
    fw = sub.add_parser("firmware", help="roll firmware bundles out to nodes").add_subparsers(
        dest="cmd", required=True
    )
    trust = fw.add_parser(
        "trust",
        help="trust a firmware signing key (its .pub file); 'trust ls' lists the trusted keys",
    )
    trust.add_argument("key_file", type=Path, help="KEY.pub to trust, or 'ls' to list")
    trust.add_argument(
        "--format", choices=["text", "json"], default="text", help="with ls (default: text)"
    )
    untrust = fw.add_parser("untrust", help="stop trusting a firmware signing key")
    untrust.add_argument(
        "key_id", help="its key id (SHA256:...), as 'tctl firmware trust ls' shows"
    )
    push = fw.add_parser("push", help="start a roll-out of a signed bundle")
    push.add_argument("bundle", type=Path)
    push.add_argument("--nodes", required=True, help="labels the nodes must have: k=v[,k2=v2]")
    push.add_argument(
        "--canary",
        help="first roll out to N nodes (--canary 1) or a share of them (--canary 5%%); "
        "the rest wait until every canary installed (default: no canary stage)",
    )
    push.add_argument(
        "--canary-timeout",
        default="10m",
        help="a canary offline this long is replaced by another online node, or the "
        "roll-out stops (default: 10m)",
    )
    push.add_argument(
        "--max-parallel", type=int, default=DEFAULT_PARALLEL, help="transfers at once"
    )
    push.add_argument("--rate", help="bandwidth cap per transfer, e.g. 256KiB/s (default: no cap)")
    push.add_argument(
        "--force",
        action="store_true",
        help="ask for a downgrade or re-install (only devices started with "
        "--firmware-allow-downgrade accept it)",
    )
    push.add_argument("--format", choices=["text", "json"], default="text")
    stop = fw.add_parser("stop", help="stop a roll-out: no node is offered the bundle any more")
    stop.add_argument("rollout")
    status = fw.add_parser("status", help="roll-outs, or one roll-out's nodes")
    status.add_argument("rollout", nargs="?", help="roll-out id (default: list every roll-out)")
    status.add_argument("--format", choices=["text", "json"], default="text")
    return {"firmware": cmd_firmware}


async def cmd_firmware(args: argparse.Namespace, hub: HubClient) -> None:
    if args.cmd == "trust" and str(args.key_file) == "ls":
        await _trust_ls(args, hub)
    elif args.cmd == "trust":
        await _trust(args, hub)
    elif args.cmd == "untrust":
        await _untrust(args, hub)
    elif args.cmd == "push":
        await _push(args, hub)
    elif args.cmd == "stop":
        await _stop(args, hub)
    else:
        await _status(args, hub)


async def _trust(args: argparse.Namespace, hub: HubClient) -> None:
    try:
        text = args.key_file.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise UsageError(f"cannot read {args.key_file}: {exc.strerror}") from None
    out = await hub.call(AdminMethod.FIRMWARE_TRUST, text=text, file=str(args.key_file))
    for kid in out["key_ids"]:
        print(f"Trusted firmware key {kid}{'' if out['new'] else ' (already trusted)'}")


async def _trust_ls(args: argparse.Namespace, hub: HubClient) -> None:
    items = await hub.call(AdminMethod.FIRMWARE_TRUST_LS)
    if args.format == "json":
        print(json.dumps(items, indent=2, sort_keys=True))
        return
    if not items:
        print("No firmware signing key is trusted: add one with 'tctl firmware trust KEY.pub'")
        return
    rows = [[i["key_id"], " ".join(i["public_key"].split()[2:])] for i in items]
    print(table(rows, ["Key ID", "Comment"]))


async def _untrust(args: argparse.Namespace, hub: HubClient) -> None:
    await hub.call(AdminMethod.FIRMWARE_UNTRUST, key_id=args.key_id)
    print(
        f"Firmware key {args.key_id} is no longer trusted: 'tctl firmware push' refuses "
        "bundles it signed (devices trust their own --firmware-key files)"
    )


async def _push(args: argparse.Namespace, hub: HubClient) -> None:
    """Check the options with the hub, upload the bundle in chunks, start the roll-out."""
    options = {
        "nodes": args.nodes,
        "canary": args.canary,
        "canary_timeout": args.canary_timeout,
        "max_parallel": args.max_parallel,
        "rate": args.rate,
        "force": args.force,
    }
    await hub.call(AdminMethod.FIRMWARE_UPLOAD, check=True, **options)  # before any byte
    try:
        src = open(args.bundle, "rb")  # noqa: SIM115, ASYNC230 - closed below
    except OSError as exc:
        raise UsageError(f"cannot read {args.bundle}: {exc.strerror}") from None
    with src:
        size = os.fstat(src.fileno()).st_size
        digest = hashlib.sha256()  # the name the hub stores the bundle under
        while chunk := src.read(UPLOAD_CHUNK):
            digest.update(chunk)
        src.seek(0)
        began = await hub.call(
            AdminMethod.FIRMWARE_UPLOAD, size=size, sha256=digest.hexdigest(), **options
        )
        upload_id, sent = began["upload_id"], 0
        while chunk := src.read(UPLOAD_CHUNK):
            await hub.call(
                AdminMethod.FIRMWARE_UPLOAD, upload_id=upload_id, offset=sent, data=chunk
            )
            sent += len(chunk)
    out = await hub.call(AdminMethod.FIRMWARE_PUSH, upload_id=upload_id, **options)
    if args.format == "json":
        print(json.dumps(out, indent=2, sort_keys=True))
        return
    canaries = out["canaries"]
    canary = f", canaries first: {', '.join(canaries)}" if canaries else ""
    print(
        f"Roll-out {out['id']}: {out['name']} {out['version']} to {len(out['nodes'])} node(s)"
        f"{canary}. Follow it with 'tctl firmware status {out['id']}'."
    )
    for item in out["skipped"]:
        print(f"  skipped {item['node']}: {item['reason']}")


async def _stop(args: argparse.Namespace, hub: HubClient) -> None:
    out = await hub.call(AdminMethod.FIRMWARE_STOP, rollout=args.rollout)
    print(
        f"Roll-out {out['id']} stopped: no node is offered the bundle any more "
        "(an install already running on a device finishes there)."
    )


async def _status(args: argparse.Namespace, hub: HubClient) -> None:
    out = await hub.call(AdminMethod.FIRMWARE_STATUS, rollout=args.rollout)
    if args.format == "json":
        print(json.dumps(out, indent=2, sort_keys=True))
        return
    if args.rollout:
        head = f"Roll-out {out['id']}: {out['name']} {out['version']}, {out['state']}"
        print(head + (f" ({out['reason']})" if out["reason"] else ""))
        size = out["size"]
        rows = [
            [
                n["node"],
                "yes" if n["canary"] else "",
                n["state"],
                f"{100 * n['progress'] // size}%" if size and n["progress"] else "",
                str(n["resumed_from"] or ""),
                n["detail"],
            ]
            for n in out["nodes"]
        ]
        print(table(rows, ["Node", "Canary", "State", "Staged", "Resumed from", "Detail"]))
        return
    rows = []
    for r in out:
        states = r["node_states"]
        done, total = states.get("installed", 0), sum(states.values())
        rows.append(
            [
                r["id"],
                r["name"],
                r["version"],
                r["state"],
                f"{done}/{total}",
                fmt_time(r["created"]),
            ]
        )
    print(table(rows, ["ID", "Bundle", "Version", "State", "Installed", "Created"]))
