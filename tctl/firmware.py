"""``tctl firmware trust|untrust|push|stop|status``: firmware roll-outs (docs/firmware-rollouts.md).

``push`` verifies the bundle against the keys this hub trusts, copies it into
the data dir and writes a roll-out to ``firmware.db``; the running hub picks it
up within a second (hub/firmware.py) and reports progress to the same file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from remoteler.errors import UsageError
from remoteler.textfmt import fmt_time, table

Handler = Callable[[argparse.Namespace], Coroutine[Any, Any, None]]

TRUST_FILE = "trusted.pub"
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


async def cmd_firmware(args: argparse.Namespace) -> None:
    if args.cmd == "trust" and str(args.key_file) == "ls":
        _trust_ls(args)
    elif args.cmd == "trust":
        _trust(args)
    elif args.cmd == "untrust":
        _untrust(args)
    elif args.cmd == "push":
        await _push(args)
    elif args.cmd == "stop":
        await _stop(args)
    else:
        await _status(args)


def _data(args: argparse.Namespace) -> Path:
    from hub.datadir import DataDir

    data = DataDir(Path(args.data_dir))
    data.cluster_name()  # clear error if this is not a hub data dir
    return data.path


def _trusted(data_dir: Path) -> list[Any]:
    from firmware_tools.keys import load_trusted_keys
    from hub.firmware_store import firmware_dir

    path = firmware_dir(data_dir) / TRUST_FILE
    if not path.exists():
        raise UsageError(
            "this hub trusts no firmware signing key: add one with 'tctl firmware trust KEY.pub'"
        )
    return load_trusted_keys(path)


def _trust(args: argparse.Namespace) -> None:
    from firmware_tools.keys import key_ids, load_trusted_keys, public_line
    from hub.firmware_store import firmware_dir

    path = firmware_dir(_data(args)) / TRUST_FILE
    keys = load_trusted_keys(args.key_file)  # ConfigError names the file and line
    have = set(key_ids(load_trusted_keys(path))) if path.exists() else set()
    new = [k for k, kid in zip(keys, key_ids(keys), strict=True) if kid not in have]
    with open(path, "a") as f:
        for key in new:
            f.write(public_line(key) + "\n")
    for kid in key_ids(keys):
        print(f"Trusted firmware key {kid}{'' if new else ' (already trusted)'}")


def _trust_ls(args: argparse.Namespace) -> None:
    from firmware_tools.keys import key_id, load_public_key
    from hub.firmware_store import firmware_dir

    path = firmware_dir(_data(args)) / TRUST_FILE
    rows = [(key_id(load_public_key(line)), line) for line in _key_lines(path)]
    if args.format == "json":
        items = [{"key_id": kid, "public_key": line.strip()} for kid, line in rows]
        print(json.dumps(items, indent=2, sort_keys=True))
        return
    if not rows:
        print("No firmware signing key is trusted: add one with 'tctl firmware trust KEY.pub'")
        return
    print(table([[kid, " ".join(line.split()[2:])] for kid, line in rows], ["Key ID", "Comment"]))


def _key_lines(path: Path) -> list[str]:
    """The trust file's key lines (its comments and blank lines left out)."""
    from firmware_tools.keys import load_trusted_keys

    if not path.exists():
        return []
    load_trusted_keys(path)  # ConfigError names the file and a bad line
    text = path.read_text(encoding="utf-8", errors="replace")
    return [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def _untrust(args: argparse.Namespace) -> None:
    from firmware_tools.keys import key_id, load_public_key
    from hub.firmware_store import firmware_dir
    from remoteler.fsutil import write_file_atomic

    path = firmware_dir(_data(args)) / TRUST_FILE
    lines = _key_lines(path)
    ids = [key_id(load_public_key(line)) for line in lines]
    if args.key_id not in ids:
        have = ", ".join(ids) if ids else "none"
        raise UsageError(
            f"firmware key {args.key_id!r} is not trusted (trusted: {have}): "
            "see 'tctl firmware trust ls'"
        )
    drop = {line for line, kid in zip(lines, ids, strict=True) if kid == args.key_id}
    if len(drop) == len(set(lines)):
        path.unlink()  # its last key
    else:  # the operator's comments and the other keys stay, as does the file's mode
        text = path.read_text(encoding="utf-8", errors="replace").splitlines()
        keep = "".join(line + "\n" for line in text if line not in drop)
        write_file_atomic(path, keep.encode(), os.stat(path).st_mode & 0o777)
    print(
        f"Firmware key {args.key_id} is no longer trusted: 'tctl firmware push' refuses "
        "bundles it signed (devices trust their own --firmware-key files)"
    )


def _take_in(bundle: Path, data_dir: Path, trusted: list[Any]) -> tuple[Any, str, int, Path]:
    """Copy the bundle into the data dir, then verify the copy (what will be pushed).

    Returns (manifest, sha256 of the whole file, its size, the copy's path).
    """
    from firmware_tools.bundle import BundleError, verify_file
    from hub.firmware_store import firmware_dir

    bundles = firmware_dir(data_dir) / "bundles"
    bundles.mkdir(mode=0o700, exist_ok=True)
    tmp = bundles / f".incoming-{os.getpid()}"
    whole = hashlib.sha256()
    try:
        with open(bundle, "rb") as src, open(tmp, "wb") as dst:
            while chunk := src.read(1 << 20):
                whole.update(chunk)
                dst.write(chunk)
            size = dst.tell()
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise UsageError(f"cannot read {bundle}: {exc.strerror}") from None
    try:
        manifest = verify_file(tmp, trusted)
    except BundleError as exc:  # named as firmware-tools names it: "untrusted signer: ..."
        tmp.unlink(missing_ok=True)
        raise type(exc)(f"{exc.refusal}: {exc}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    copy = bundles / f"{whole.hexdigest()}.bundle"
    os.replace(tmp, copy)
    return manifest, whole.hexdigest(), size, copy


def _canary(text: str | None) -> tuple[int | None, float | None]:
    """``--canary``: (a number of nodes, None) for ``N``, (None, a percentage) for ``N%``."""
    if text is None:
        return None, None
    bad = UsageError(
        f"bad --canary {text!r}: give a number of nodes (e.g. 1) or a share of them (e.g. 5%)"
    )
    if m := re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*%\s*", text):
        if not 0 < float(m.group(1)) <= 100:
            raise bad
        return None, float(m.group(1))
    if m := re.fullmatch(r"\s*(\d+)\s*", text):
        if int(m.group(1)) < 1:
            raise bad
        return int(m.group(1)), None
    raise bad


async def _push(args: argparse.Namespace) -> None:
    from firmware_tools.bundle import AgentTooOld, TargetMismatch, check_manifest
    from hub.backend import SQLiteBackend
    from hub.datadir import DataDir
    from hub.firmware_store import FirmwareStore, Rollout, new_rollout_id
    from remoteler.addr import format_labels, parse_labels, parse_ttl
    from remoteler.audit.events import HUB_NODE, EventType, make_event
    from remoteler.firmware_xfer import parse_rate

    selector = parse_labels(args.nodes)
    if not selector:
        raise UsageError("--nodes needs at least one k=v label, e.g. --nodes env=prod")
    count, percent = _canary(args.canary)
    try:
        canary_timeout = float(parse_ttl(args.canary_timeout))
    except UsageError:
        raise UsageError(
            f"bad --canary-timeout {args.canary_timeout!r}: give a duration with s, m, h "
            "or d, e.g. 10m (the default) or 30s"
        ) from None
    if args.max_parallel < 1:
        raise UsageError("--max-parallel must be at least 1")
    try:
        rate = parse_rate(args.rate) if args.rate else None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    data_dir = _data(args)
    manifest, sha256, size, copy = _take_in(args.bundle, data_dir, _trusted(data_dir))
    backend = await SQLiteBackend.open(DataDir(data_dir).db_path)
    try:
        all_nodes = await backend.list_nodes()
    finally:
        await backend.close()
    chosen, skipped = [], []
    for node in sorted(all_nodes, key=lambda n: n.name):
        labels = node.effective_labels(node.labels)
        if any(labels.get(k) != v for k, v in selector.items()):
            continue
        try:  # what the device will check too; versions are the device's to judge
            check_manifest(
                manifest, labels=labels, installed_version=None, agent_version=node.version or "0"
            )
        except (TargetMismatch, AgentTooOld) as exc:
            skipped.append((node.name, f"{exc.refusal}: {exc}"))  # as firmware-tools names it
            continue
        chosen.append(node)
    if not chosen:
        why = f" ({len(skipped)} skipped: {skipped[0][1]})" if skipped else ""
        raise UsageError(f"no node has labels {format_labels(selector)}{why}: see 'tctl nodes ls'")
    if count is not None:
        canaries = min(count, len(chosen))
    else:
        canaries = 0 if percent is None else max(1, math.ceil(len(chosen) * percent / 100))
    rollout = Rollout(
        id=new_rollout_id(),
        created=time.time(),
        name=manifest.name,
        version=manifest.version,
        bundle=str(copy),
        sha256=sha256,
        size=size,
        selector=selector,
        canary_percent=percent,
        max_parallel=args.max_parallel,
        rate=rate,
        force=args.force,
        state="running",
        canary_timeout=canary_timeout,
    )
    store = await FirmwareStore.open(data_dir)
    try:
        await store.create(rollout, [(n.id, n.name, i < canaries) for i, n in enumerate(chosen)])
    finally:
        await store.close()
    await _audit(
        data_dir,
        make_event(
            EventType.FIRMWARE_ROLLOUT_START,
            node=HUB_NODE,
            rollout=rollout.id,
            version=manifest.version,
            name=manifest.name,
            nodes=len(chosen),
            canaries=[n.name for n in chosen[:canaries]],
            sha256=sha256,
        ),
    )
    out = {
        "id": rollout.id,
        "name": manifest.name,
        "version": manifest.version,
        "nodes": [n.name for n in chosen],
        "canaries": [n.name for n in chosen[:canaries]],
        "skipped": [{"node": n, "reason": r} for n, r in skipped],
    }
    if args.format == "json":
        print(json.dumps(out, indent=2, sort_keys=True))
        return
    canary = f", canaries first: {', '.join(out['canaries'])}" if canaries else ""
    print(
        f"Roll-out {rollout.id}: {manifest.name} {manifest.version} to {len(chosen)} node(s)"
        f"{canary}. Follow it with 'tctl firmware status {rollout.id}'."
    )
    for name, reason in skipped:
        print(f"  skipped {name}: {reason}")


async def _stop(args: argparse.Namespace) -> None:
    from hub.firmware_store import FirmwareStore
    from remoteler.audit.events import HUB_NODE, EventType, make_event

    data_dir = _data(args)
    store = await FirmwareStore.open(data_dir)
    try:
        rollout = await store.rollout(args.rollout)
        if rollout is None:
            raise UsageError(
                f"no roll-out {args.rollout!r}: see 'tctl firmware status' for the list"
            )
        if rollout.state != "running":
            raise UsageError(f"roll-out {rollout.id} is already {rollout.state}")
        if not await store.finish(rollout.id, "stopped", "stopped with tctl firmware stop"):
            now = await store.rollout(rollout.id)  # the hub ended it meanwhile
            raise UsageError(f"roll-out {rollout.id} is already {now.state if now else 'gone'}")
    finally:
        await store.close()
    await _audit(
        data_dir,
        make_event(
            EventType.FIRMWARE_ROLLOUT_STOP,
            node=HUB_NODE,
            rollout=rollout.id,
            reason="stopped with tctl firmware stop",
        ),
    )
    print(
        f"Roll-out {rollout.id} stopped: no node is offered the bundle any more "
        "(an install already running on a device finishes there)."
    )


async def _audit(data_dir: Path, event: Any) -> None:
    from hub.dbcheck import open_audit_store

    audit = await open_audit_store(data_dir)
    try:
        await audit.record(event)
    finally:
        await audit.close()


def _shown_state(rollout: Any, n: Any) -> str:
    """A stopped roll-out's unfinished nodes show as ``stopped``: nothing more happens to them."""
    return "stopped" if rollout.state == "stopped" and not n.final else str(n.state)


def _node_json(rollout: Any, n: Any) -> dict[str, Any]:
    return {
        "node": n.node_name,
        "node_id": n.node_id,
        "canary": n.canary,
        "state": _shown_state(rollout, n),
        "detail": n.detail,
        "progress": n.progress,
        "resumed_from": n.resumed_from,
        "attempts": n.attempts,
        "updated": n.updated,
    }


def _rollout_json(r: Any) -> dict[str, Any]:
    return {
        "id": r.id,
        "name": r.name,
        "version": r.version,
        "state": r.state,
        "reason": r.reason,
        "created": r.created,
        "finished": r.finished,
        "nodes_selector": r.selector,
        "canary_percent": r.canary_percent,
        "canary_timeout": r.canary_timeout,
        "max_parallel": r.max_parallel,
        "rate": r.rate,
        "sha256": r.sha256,
        "size": r.size,
    }


async def _status(args: argparse.Namespace) -> None:
    from hub.firmware_store import FirmwareStore

    store = await FirmwareStore.open(_data(args))
    try:
        rollouts = await store.rollouts()
        counts = {r.id: await store.nodes(r.id) for r in rollouts}
    finally:
        await store.close()
    if args.rollout:
        rollout = next((r for r in rollouts if r.id == args.rollout), None)
        if rollout is None:
            raise UsageError(
                f"no roll-out {args.rollout!r}: see 'tctl firmware status' for the list"
            )
        nodes = counts[rollout.id]
        if args.format == "json":
            data = _rollout_json(rollout) | {"nodes": [_node_json(rollout, n) for n in nodes]}
            print(json.dumps(data, indent=2, sort_keys=True))
            return
        head = f"Roll-out {rollout.id}: {rollout.name} {rollout.version}, {rollout.state}"
        print(head + (f" ({rollout.reason})" if rollout.reason else ""))
        rows = [
            [
                n.node_name,
                "yes" if n.canary else "",
                _shown_state(rollout, n),
                f"{100 * n.progress // rollout.size}%" if rollout.size and n.progress else "",
                str(n.resumed_from or ""),
                n.detail,
            ]
            for n in nodes
        ]
        print(table(rows, ["Node", "Canary", "State", "Staged", "Resumed from", "Detail"]))
        return
    if args.format == "json":
        items = []
        for r in rollouts:
            states: dict[str, int] = {}
            for n in counts[r.id]:
                shown = _shown_state(r, n)
                states[shown] = states.get(shown, 0) + 1
            items.append(_rollout_json(r) | {"node_states": states})
        print(json.dumps(items, indent=2, sort_keys=True))
        return
    rows = []
    for r in rollouts:
        done = sum(1 for n in counts[r.id] if n.state == "installed")
        rows.append(
            [r.id, r.name, r.version, r.state, f"{done}/{len(counts[r.id])}", fmt_time(r.created)]
        )
    print(table(rows, ["ID", "Bundle", "Version", "State", "Installed", "Created"]))
