"""``admin.firmware.*``: trusted signing keys, bundle uploads and roll-outs, on the hub's
storage (``trusted_keys``, ``blobs``, ``firmware``: hub/storage/api.py).

``tctl firmware push`` names the bundle's sha256 and size, uploads it in chunks of at
most :data:`~remoteler.admin.UPLOAD_CHUNK` bytes (``admin.firmware.upload``), which
stream into the blob of that name, then asks for the roll-out
(``admin.firmware.push``): the hub verifies the stored bytes against the keys it
trusts and writes the roll-out; the orchestrator of every hub on the storage
(hub/firmware/rollouts.py) hears of it on the change feed. An upload is capped at
:data:`MAX_UPLOAD` bytes, :data:`MAX_UPLOADS` at once, and dropped (nothing kept)
:data:`UPLOAD_IDLE` s after its last chunk or :data:`UPLOAD_DEADLINE` s after it began.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from hub.admin.rpc import AdminCall, AdminHandler, opt_int, opt_text, text
from hub.storage.api import Blobs, Conflict, Rollout, Storage, StorageError, TrustedKey
from remoteler.admin import UPLOAD_CHUNK, AdminMethod
from remoteler.audit.events import EventType
from remoteler.errors import UsageError

DEFAULT_PARALLEL = 10
#: Largest bundle an upload may announce, bytes.
MAX_UPLOAD = 4 << 30
#: Uploads in progress at once, hub-wide.
MAX_UPLOADS = 4
#: An upload with no chunk for this long is dropped, seconds.
UPLOAD_IDLE = 120.0
#: An upload not pushed this long after it began is dropped, seconds.
UPLOAD_DEADLINE = 3600.0
#: Bytes read from the blob at a time while verifying it.
VERIFY_READ = 1 << 20
_SHA256 = re.compile(r"[0-9a-f]{64}")


def new_rollout_id() -> str:
    return "fw-" + secrets.token_hex(4)


@dataclass
class Upload:
    id: str
    #: the blob's name: the bundle's sha256 as tctl computed it
    sha256: str
    size: int
    began: float
    touched: float
    #: storing the chunks as they come (``blobs.put``)
    task: asyncio.Task[int]
    #: chunks on their way to ``task``; None ends them
    queue: asyncio.Queue[bytes | None] = field(default_factory=lambda: asyncio.Queue(2))
    received: int = 0


async def _drain(queue: asyncio.Queue[bytes | None]) -> AsyncIterator[bytes]:
    while (chunk := await queue.get()) is not None:
        yield chunk


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
        """Forget an upload; a blob not stored yet is not stored (its put is cancelled)."""
        up = self.open.pop(upload_id, None)
        if up is not None:
            up.task.cancel()

    def begin(self, blobs: Blobs, sha256: str | None, size: int) -> Upload:
        self.sweep()
        if not 0 < size <= MAX_UPLOAD:
            raise UsageError(f"a bundle must be 1 byte to {MAX_UPLOAD >> 20} MiB; this is {size}")
        if sha256 is None or not _SHA256.fullmatch(sha256):
            raise UsageError(
                "the upload needs the bundle's sha256: upgrade tctl to the hub's version"
            )
        if len(self.open) >= MAX_UPLOADS:
            raise UsageError(f"{MAX_UPLOADS} uploads are in progress; try again in a minute")
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(2)
        task = asyncio.ensure_future(blobs.put(sha256, _drain(queue), size))
        task.add_done_callback(_quiet)
        now = self.clock()
        upload_id = secrets.token_hex(8)
        up = self.open[upload_id] = Upload(upload_id, sha256, size, now, now, task, queue)
        return up

    def get(self, upload_id: str) -> Upload:
        self.sweep()
        up = self.open.get(upload_id)
        if up is None:
            raise UsageError("the upload expired or is unknown; run 'tctl firmware push' again")
        return up


def _quiet(task: asyncio.Task[int]) -> None:
    """A put that failed or was cancelled is reported by the call that awaits it (or none)."""
    if not task.cancelled():
        task.exception()


async def _feed(up: Upload, chunk: bytes | None) -> None:
    """Hand a chunk (None: the end) to the upload's put; its error if it ended early."""
    put = asyncio.ensure_future(up.queue.put(chunk))
    await asyncio.wait({put, up.task}, return_when=asyncio.FIRST_COMPLETED)
    if not put.done():
        put.cancel()
        await _stored(up)  # raises: the put ended before taking every chunk
        raise UsageError("the upload was cut short; run 'tctl firmware push' again")


async def _stored(up: Upload) -> int:
    """The put's result: the stored size; a refusal as one line for tctl."""
    try:
        return await up.task
    except asyncio.CancelledError:
        raise UsageError("the upload was dropped; run 'tctl firmware push' again") from None
    except Conflict:
        raise UsageError(
            "the uploaded bytes do not match the bundle's sha256 or size: the file changed "
            "during the upload; run 'tctl firmware push' again"
        ) from None


async def _trusted_keys(storage: Storage) -> list[TrustedKey]:
    return await storage.trusted_keys.all()


async def trust(call: AdminCall, params: dict[str, Any]) -> Any:
    """Trust the keys in a ``.pub`` file's text; return their ids and whether any was new."""
    from firmware_tools.keys import key_id, parse_trusted_keys

    name = text(params, "file", "KEY.pub")
    keys = parse_trusted_keys(text(params, "text"), name)  # ConfigError names a bad line
    ids, new, now = [], False, time.time()
    for i, (pub, line) in enumerate(keys):
        kid = key_id(pub)
        fields = line.split()
        stored = TrustedKey(kid, f"{fields[0]} {fields[1]}", " ".join(fields[2:]), now + i * 1e-6)
        new = await call.host.storage.trusted_keys.add(stored) or new
        if kid not in ids:
            ids.append(kid)
    for kid in ids:
        await call.changed("firmware.trust", kid, new=new)
    return {"key_ids": ids, "new": new}


async def trust_ls(call: AdminCall, params: dict[str, Any]) -> Any:
    return [
        {"key_id": k.fingerprint, "public_key": f"{k.public_key} {k.comment}".strip()}
        for k in await _trusted_keys(call.host.storage)
    ]


async def untrust(call: AdminCall, params: dict[str, Any]) -> Any:
    wanted = text(params, "key_id")
    if not await call.host.storage.trusted_keys.remove(wanted):
        ids = [k.fingerprint for k in await _trusted_keys(call.host.storage)]
        have = ", ".join(ids) if ids else "none"
        raise UsageError(
            f"firmware key {wanted!r} is not trusted (trusted: {have}): "
            "see 'tctl firmware trust ls'"
        )
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


async def _trusted(call: AdminCall) -> list[Any]:
    from firmware_tools.keys import load_public_key

    keys = await _trusted_keys(call.host.storage)
    if not keys:
        raise UsageError(
            "this hub trusts no firmware signing key: add one with 'tctl firmware trust KEY.pub'"
        )
    return [load_public_key(k.public_key) for k in keys]


def uploader(uploads: Uploads) -> AdminHandler:
    async def upload(call: AdminCall, params: dict[str, Any]) -> Any:
        """Begin (no ``upload_id``: check the options and the size) or continue an upload."""
        upload_id = opt_text(params, "upload_id")
        if upload_id is None:
            _push_options(params)  # refuse bad options before the bytes travel
            await _trusted(call)
            if params.get("check"):
                return {"upload_id": None, "received": 0, "chunk": UPLOAD_CHUNK}
            size = opt_int(params, "size")
            sha256 = opt_text(params, "sha256")
            up = uploads.begin(call.host.storage.blobs, sha256, size or 0)
            return {"upload_id": up.id, "received": 0, "chunk": UPLOAD_CHUNK}
        up = uploads.get(upload_id)
        data = params.get("data")
        offset = opt_int(params, "offset")
        if not isinstance(data, bytes) or len(data) > UPLOAD_CHUNK:
            raise UsageError(f"a chunk is bytes, at most {UPLOAD_CHUNK}")
        if offset != up.received or up.received + len(data) > up.size:
            uploads.drop(up.id)
            raise UsageError("the upload went out of order; run 'tctl firmware push' again")
        try:
            await _feed(up, data)
        except UsageError:
            uploads.drop(up.id)
            raise
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
            await _feed(up, None)
            await _stored(up)
        finally:
            uploads.drop(up.id)
        storage = call.host.storage
        try:
            manifest = await _verify(storage.blobs, up.sha256, await _trusted(call))
        except BaseException:
            await _forget(storage, up.sha256)  # refused: nothing of it is kept
            raise
        # A verified blob stays when no node matches: a push with the right labels reuses it.
        return await _start(call, opts, manifest, up.sha256, up.size)

    return push


async def _verify(blobs: Blobs, name: str, trusted: list[Any]) -> Any:
    """Signature and payload of the stored bundle (what will be pushed), as
    ``firmware-tools bundle verify`` checks a file, with its refusal names."""
    from firmware_tools.bundle import (
        FIXED_HEADER,
        BundleError,
        PayloadVerifier,
        header_size,
        split_header,
        verify_signature,
    )

    try:
        prefix = await blobs.read(name, 0, FIXED_HEADER)
        size = header_size(prefix) if len(prefix) == FIXED_HEADER else None
        head = prefix + (await blobs.read(name, FIXED_HEADER, size - FIXED_HEADER) if size else b"")
        raw = split_header(head)
        manifest = verify_signature(raw, trusted)
        checker = PayloadVerifier(manifest)
        offset = raw.payload_offset
        while chunk := await blobs.read(
            name, offset, min(VERIFY_READ, manifest.size - checker.received + 1)
        ):
            checker.feed(chunk)
            offset += len(chunk)
        checker.finish()
    except BundleError as exc:  # named as firmware-tools names it: "untrusted signer: ..."
        raise type(exc)(f"{exc.refusal}: {exc}") from None
    return manifest


async def _forget(storage: Storage, name: str) -> None:
    """Delete a refused bundle's blob unless a roll-out uses the same bytes."""
    with contextlib.suppress(StorageError):
        if not any(r.bundle == name for r in await storage.firmware.rollouts()):
            await storage.blobs.delete(name)


async def _start(
    call: AdminCall, opts: dict[str, Any], manifest: Any, sha256: str, size: int
) -> Any:
    from firmware_tools.bundle import AgentTooOld, TargetMismatch, check_manifest
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
        bundle=sha256,
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
    rows = [(n.id, n.name, i < canaries) for i, n in enumerate(chosen)]
    await call.host.storage.firmware.create(rollout, rows)
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
    rollout_id = text(params, "rollout")
    store = call.host.storage.firmware
    rollout = await store.rollout(rollout_id)
    if rollout is None:
        raise UsageError(f"no roll-out {rollout_id!r}: see 'tctl firmware status' for the list")
    if rollout.state != "running":
        raise UsageError(f"roll-out {rollout.id} is already {rollout.state}")
    reason = "stopped with tctl firmware stop"
    if not await store.finish(rollout.id, "stopped", reason, time.time()):
        now = await store.rollout(rollout.id)  # the hub ended it meanwhile
        raise UsageError(f"roll-out {rollout.id} is already {now.state if now else 'gone'}")
    await call.record(EventType.FIRMWARE_ROLLOUT_STOP, rollout=rollout.id, reason=reason)
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
    wanted = opt_text(params, "rollout")
    store = call.host.storage.firmware
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
