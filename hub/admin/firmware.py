"""``admin.firmware.*``: trusted signing keys, bundle uploads and roll-outs.

``tctl firmware push`` uploads the bundle in chunks of at most
:data:`~remoteler.admin.UPLOAD_CHUNK` bytes (``admin.firmware.upload``), then
asks for the roll-out (``admin.firmware.push``): the hub verifies its copy
against the keys it trusts, keeps it in ``DATA/firmware/bundles/`` and writes the
roll-out; the orchestrator (hub/firmware/rollouts.py) picks it up within a second. An
upload is capped at :data:`MAX_UPLOAD` bytes, :data:`MAX_UPLOADS` at once, and
dropped (its file removed) :data:`UPLOAD_IDLE` s after its last chunk or
:data:`UPLOAD_DEADLINE` s after it began.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hub.admin.rpc import AdminCall, AdminHandler, opt_int, opt_text, text
from remoteler.admin import UPLOAD_CHUNK, AdminMethod
from remoteler.audit.events import EventType
from remoteler.errors import UsageError

TRUST_FILE = "trusted.pub"
DEFAULT_PARALLEL = 10
#: Largest bundle an upload may announce, bytes.
MAX_UPLOAD = 4 << 30
#: Uploads in progress at once, hub-wide.
MAX_UPLOADS = 4
#: An upload with no chunk for this long is dropped, seconds.
UPLOAD_IDLE = 120.0
#: An upload not pushed this long after it began is dropped, seconds.
UPLOAD_DEADLINE = 3600.0


@dataclass
class Upload:
    id: str
    path: Path
    size: int
    began: float
    touched: float
    received: int = 0
    digest: Any = field(default_factory=hashlib.sha256)


class Uploads:
    """Bundle uploads in progress (in memory: a hub restart drops them and tctl retries)."""

    def __init__(self, clock: Any = time.monotonic) -> None:
        self.clock = clock
        self.open: dict[str, Upload] = {}

    def sweep(self) -> None:
        now = self.clock()
        for up in list(self.open.values()):
            if now - up.touched > UPLOAD_IDLE or now - up.began > UPLOAD_DEADLINE:
                self.drop(up.id)

    def drop(self, upload_id: str) -> None:
        up = self.open.pop(upload_id, None)
        if up is not None:
            up.path.unlink(missing_ok=True)

    def begin(self, bundles: Path, size: int) -> Upload:
        self.sweep()
        if not 0 < size <= MAX_UPLOAD:
            raise UsageError(f"a bundle must be 1 byte to {MAX_UPLOAD >> 20} MiB; this is {size}")
        if len(self.open) >= MAX_UPLOADS:
            raise UsageError(f"{MAX_UPLOADS} uploads are in progress; try again in a minute")
        bundles.mkdir(mode=0o700, parents=True, exist_ok=True)
        upload_id = secrets.token_hex(8)
        path = bundles / f".incoming-{upload_id}"
        path.touch(mode=0o600)
        now = self.clock()
        up = self.open[upload_id] = Upload(upload_id, path, size, now, now)
        return up

    def get(self, upload_id: str) -> Upload:
        self.sweep()
        up = self.open.get(upload_id)
        if up is None:
            raise UsageError("the upload expired or is unknown; run 'tctl firmware push' again")
        return up


def _append(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def _dir(call: AdminCall) -> Path:
    from hub.firmware_store import firmware_dir

    return firmware_dir(call.data.path)


def _key_lines(path: Path) -> list[str]:
    """The trust file's key lines (its comments and blank lines left out)."""
    from firmware_tools.keys import load_trusted_keys

    if not path.exists():
        return []
    load_trusted_keys(path)  # ConfigError names the file and a bad line
    body = path.read_text(encoding="utf-8", errors="replace")
    return [ln for ln in body.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


async def trust(call: AdminCall, params: dict[str, Any]) -> Any:
    """Trust the keys in a ``.pub`` file's text; return their ids and whether any was new."""
    import tempfile

    from firmware_tools.keys import key_ids, load_trusted_keys, public_line

    path = _dir(call) / TRUST_FILE
    name = text(params, "file", "KEY.pub")
    with tempfile.TemporaryDirectory() as tmp:  # the loader reads files and names them
        given = Path(tmp) / Path(name).name
        given.write_text(text(params, "text"), encoding="utf-8")
        try:
            keys = load_trusted_keys(given)
        except Exception as exc:
            raise type(exc)(str(exc).replace(str(given), name)) from None
    have = set(key_ids(load_trusted_keys(path))) if path.exists() else set()
    new = [k for k, kid in zip(keys, key_ids(keys), strict=True) if kid not in have]
    _append(path, "".join(public_line(key) + "\n" for key in new).encode())
    ids = key_ids(keys)
    for kid in ids:
        await call.changed("firmware.trust", kid, new=bool(new))
    return {"key_ids": ids, "new": bool(new)}


async def trust_ls(call: AdminCall, params: dict[str, Any]) -> Any:
    from firmware_tools.keys import key_id, load_public_key

    lines = _key_lines(_dir(call) / TRUST_FILE)
    return [{"key_id": key_id(load_public_key(ln)), "public_key": ln.strip()} for ln in lines]


async def untrust(call: AdminCall, params: dict[str, Any]) -> Any:
    from firmware_tools.keys import key_id, load_public_key
    from remoteler.fsutil import write_file_atomic

    wanted = text(params, "key_id")
    path = _dir(call) / TRUST_FILE
    lines = _key_lines(path)
    ids = [key_id(load_public_key(line)) for line in lines]
    if wanted not in ids:
        have = ", ".join(ids) if ids else "none"
        raise UsageError(
            f"firmware key {wanted!r} is not trusted (trusted: {have}): "
            "see 'tctl firmware trust ls'"
        )
    drop = {line for line, kid in zip(lines, ids, strict=True) if kid == wanted}
    if len(drop) == len(set(lines)):
        path.unlink()  # its last key
    else:  # the operator's comments and the other keys stay, as does the file's mode
        body = path.read_text(encoding="utf-8", errors="replace").splitlines()
        keep = "".join(line + "\n" for line in body if line not in drop)
        write_file_atomic(path, keep.encode(), os.stat(path).st_mode & 0o777)
    await call.changed("firmware.untrust", wanted)
    return {"key_id": wanted}


def _canary(value: str | None) -> tuple[int | None, float | None]:
    """``--canary``: (a number of nodes, None) for ``N``, (None, a percentage) for ``N%``."""
    if value is None:
        return None, None
    bad = UsageError(
        f"bad --canary {value!r}: give a number of nodes (e.g. 1) or a share of them (e.g. 5%)"
    )
    if m := re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*%\s*", value):
        if not 0 < float(m.group(1)) <= 100:
            raise bad
        return None, float(m.group(1))
    if m := re.fullmatch(r"\s*(\d+)\s*", value):
        if int(m.group(1)) < 1:
            raise bad
        return int(m.group(1)), None
    raise bad


def _push_options(params: dict[str, Any]) -> dict[str, Any]:
    """Check the roll-out options before any byte is uploaded (``check_only``)."""
    from remoteler.addr import parse_labels, parse_ttl
    from remoteler.firmware_xfer import parse_rate

    selector = parse_labels(text(params, "nodes"))
    if not selector:
        raise UsageError("--nodes needs at least one k=v label, e.g. --nodes env=prod")
    count, percent = _canary(opt_text(params, "canary"))
    timeout = text(params, "canary_timeout", "10m")
    try:
        canary_timeout = float(parse_ttl(timeout))
    except UsageError:
        raise UsageError(
            f"bad --canary-timeout {timeout!r}: give a duration with s, m, h "
            "or d, e.g. 10m (the default) or 30s"
        ) from None
    max_parallel = opt_int(params, "max_parallel")
    max_parallel = DEFAULT_PARALLEL if max_parallel is None else max_parallel
    if max_parallel < 1:
        raise UsageError("--max-parallel must be at least 1")
    rate_text = opt_text(params, "rate")
    try:
        rate = parse_rate(rate_text) if rate_text else None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return {
        "selector": selector,
        "count": count,
        "percent": percent,
        "canary_timeout": canary_timeout,
        "max_parallel": max_parallel,
        "rate": rate,
        "force": bool(params.get("force")),
    }


def _trusted(call: AdminCall) -> list[Any]:
    from firmware_tools.keys import load_trusted_keys

    path = _dir(call) / TRUST_FILE
    if not path.exists():
        raise UsageError(
            "this hub trusts no firmware signing key: add one with 'tctl firmware trust KEY.pub'"
        )
    return load_trusted_keys(path)


def uploader(uploads: Uploads) -> AdminHandler:
    async def upload(call: AdminCall, params: dict[str, Any]) -> Any:
        """Begin (no ``upload_id``: check the options and the size) or continue an upload."""
        upload_id = opt_text(params, "upload_id")
        if upload_id is None:
            _push_options(params)  # refuse bad options before the bytes travel
            _trusted(call)
            if params.get("check"):
                return {"upload_id": None, "received": 0, "chunk": UPLOAD_CHUNK}
            size = opt_int(params, "size")
            up = uploads.begin(_dir(call) / "bundles", size or 0)
            return {"upload_id": up.id, "received": 0, "chunk": UPLOAD_CHUNK}
        up = uploads.get(upload_id)
        data = params.get("data")
        offset = opt_int(params, "offset")
        if not isinstance(data, bytes) or len(data) > UPLOAD_CHUNK:
            raise UsageError(f"a chunk is bytes, at most {UPLOAD_CHUNK}")
        if offset != up.received or up.received + len(data) > up.size:
            uploads.drop(up.id)
            raise UsageError("the upload went out of order; run 'tctl firmware push' again")
        await asyncio.to_thread(_append, up.path, data)
        up.digest.update(data)
        up.received += len(data)
        up.touched = uploads.clock()
        return {"upload_id": up.id, "received": up.received}

    return upload


def pusher(uploads: Uploads) -> AdminHandler:
    async def push(call: AdminCall, params: dict[str, Any]) -> Any:
        up = uploads.get(text(params, "upload_id"))
        try:
            if up.received != up.size:
                raise UsageError(f"the upload has {up.received} of {up.size} bytes; send the rest")
            opts = _push_options(params)
            manifest, copy = _take_in(up, _trusted(call))
        finally:
            uploads.drop(up.id)
        return await _start(call, opts, manifest, up.digest.hexdigest(), up.size, copy)

    return push


def _take_in(up: Upload, trusted: list[Any]) -> tuple[Any, Path]:
    """Verify the uploaded copy (what will be pushed) and keep it under its digest."""
    from firmware_tools.bundle import BundleError, verify_file

    try:
        manifest = verify_file(up.path, trusted)
    except BundleError as exc:  # named as firmware-tools names it: "untrusted signer: ..."
        raise type(exc)(f"{exc.refusal}: {exc}") from None
    copy = up.path.with_name(f"{up.digest.hexdigest()}.bundle")
    os.replace(up.path, copy)
    return manifest, copy


async def _start(
    call: AdminCall, opts: dict[str, Any], manifest: Any, sha256: str, size: int, copy: Path
) -> Any:
    from firmware_tools.bundle import AgentTooOld, TargetMismatch, check_manifest
    from hub.firmware_store import FirmwareStore, Rollout, new_rollout_id
    from remoteler.addr import format_labels

    selector = opts["selector"]
    chosen, skipped = [], []
    for node in sorted(await call.host.storage.nodes.all(), key=lambda n: n.name):
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
    count, percent = opts["count"], opts["percent"]
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
        max_parallel=opts["max_parallel"],
        rate=opts["rate"],
        force=opts["force"],
        state="running",
        canary_timeout=opts["canary_timeout"],
    )
    store = await FirmwareStore.open(call.data.path)
    try:
        await store.create(rollout, [(n.id, n.name, i < canaries) for i, n in enumerate(chosen)])
    finally:
        await store.close()
    await call.record(
        EventType.FIRMWARE_ROLLOUT_START,
        rollout=rollout.id,
        version=manifest.version,
        name=manifest.name,
        nodes=len(chosen),
        canaries=[n.name for n in chosen[:canaries]],
        sha256=sha256,
    )
    return {
        "id": rollout.id,
        "name": manifest.name,
        "version": manifest.version,
        "nodes": [n.name for n in chosen],
        "canaries": [n.name for n in chosen[:canaries]],
        "skipped": [{"node": n, "reason": r} for n, r in skipped],
    }


async def stop(call: AdminCall, params: dict[str, Any]) -> Any:
    from hub.firmware_store import FirmwareStore

    rollout_id = text(params, "rollout")
    store = await FirmwareStore.open(call.data.path)
    try:
        rollout = await store.rollout(rollout_id)
        if rollout is None:
            raise UsageError(f"no roll-out {rollout_id!r}: see 'tctl firmware status' for the list")
        if rollout.state != "running":
            raise UsageError(f"roll-out {rollout.id} is already {rollout.state}")
        if not await store.finish(rollout.id, "stopped", "stopped with tctl firmware stop"):
            now = await store.rollout(rollout.id)  # the hub ended it meanwhile
            raise UsageError(f"roll-out {rollout.id} is already {now.state if now else 'gone'}")
    finally:
        await store.close()
    await call.record(
        EventType.FIRMWARE_ROLLOUT_STOP,
        rollout=rollout.id,
        reason="stopped with tctl firmware stop",
    )
    return {"id": rollout.id}


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


async def status(call: AdminCall, params: dict[str, Any]) -> Any:
    """One roll-out with its nodes, or every roll-out with its node states counted."""
    from hub.firmware_store import FirmwareStore

    wanted = opt_text(params, "rollout")
    store = await FirmwareStore.open(call.data.path)
    try:
        rollouts = await store.rollouts()
        if wanted:
            rollout = next((r for r in rollouts if r.id == wanted), None)
            if rollout is None:
                raise UsageError(f"no roll-out {wanted!r}: see 'tctl firmware status' for the list")
            nodes = await store.nodes(rollout.id)
            return _rollout_json(rollout) | {"nodes": [_node_json(rollout, n) for n in nodes]}
        items = []
        for r in rollouts:
            states: dict[str, int] = {}
            for n in await store.nodes(r.id):
                shown = _shown_state(r, n)
                states[shown] = states.get(shown, 0) + 1
            items.append(_rollout_json(r) | {"node_states": states})
        return items
    finally:
        await store.close()


def methods() -> dict[AdminMethod, AdminHandler]:
    uploads = Uploads()
    return {
        AdminMethod.FIRMWARE_TRUST: trust,
        AdminMethod.FIRMWARE_TRUST_LS: trust_ls,
        AdminMethod.FIRMWARE_UNTRUST: untrust,
        AdminMethod.FIRMWARE_UPLOAD: uploader(uploads),
        AdminMethod.FIRMWARE_PUSH: pusher(uploads),
        AdminMethod.FIRMWARE_STOP: stop,
        AdminMethod.FIRMWARE_STATUS: status,
    }
