"""Installing a verified firmware into the inactive slot: hook, switch, health check, rollback.

The install hook (the manifest's relative path, an executable in the payload)
runs as ``<slot>/<hook> <slot>`` with the new slot as working directory, stdin
closed, and of the agent's environment only PATH, LANG and TZ, plus::

    REMOTELER_FW_SLOT          the new slot's directory
    REMOTELER_FW_NAME, REMOTELER_FW_VERSION, REMOTELER_FW_SHA256   from the manifest
    REMOTELER_FW_PREVIOUS_VERSION   the active version before ("" if none)
    REMOTELER_FW_OLD_SLOT      the slot active before the install ("" if none)
    REMOTELER_FW_RESTART_FILE  the hook creates this file to ask for an agent
                               restart before the health check
    REMOTELER_NODE             the node's name
    REMOTELER_DATA_DIR         the agent's data directory

The device's health check (``edge-agent start --firmware-health-check CMD``)
runs by ``/bin/sh -c`` in the new slot with the same variables (bar NAME and
SHA256). Exit status 0 is success; see docs/firmware-rollouts.md.

A hook failure leaves ``current`` untouched (the old slot stays active:
reported as ``rolled-back``); a health check failure or timeout points
``current`` back to the old slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent.slots import Pending, Result, Slots

if TYPE_CHECKING:
    from firmware_tools.bundle import Manifest

__all__ = ["InstallConfig", "Installer"]

log = logging.getLogger("remoteler.agent.firmware")

#: Seconds the install hook may run.
HOOK_TIMEOUT = 300.0
#: Seconds the health check may run.
HEALTH_TIMEOUT = 60.0
#: Seconds after the switch by which a restarted agent must have confirmed the slot.
RESTART_WINDOW = 900.0
#: Characters of a failing command's output kept in the reason.
OUTPUT_TAIL = 160
#: Bytes of a command's output kept while it runs (the rest is read and dropped).
READ_TAIL = 4096

Report = Callable[[str, str], Awaitable[None]]
Audit = Callable[..., Awaitable[None]]


@dataclass
class InstallConfig:
    node: str
    data_dir: Path
    health_check: str | None = None
    hook_timeout: float = HOOK_TIMEOUT
    health_timeout: float = HEALTH_TIMEOUT
    restart_window: float = RESTART_WINDOW
    clock: Callable[[], float] = field(default=time.time)


@dataclass(frozen=True)
class Firmware:
    """Which install this is (also known after a restart, from the pending state)."""

    sha256: str
    """Of the whole bundle file: the key of its result."""
    rollout: str
    version: str


async def _run(argv: list[str], cwd: Path, env: dict[str, str], timeout: float) -> tuple[int, str]:
    """Run a command; (exit status, tail of its output). Killed after ``timeout`` (-1)."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    assert proc.stdout is not None
    tail = bytearray()
    try:
        async with asyncio.timeout(timeout):
            while chunk := await proc.stdout.read(64 * 1024):  # a chatty hook: bounded memory
                tail += chunk
                del tail[:-READ_TAIL]
            await proc.wait()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)
        await proc.wait()
        return -1, f"timed out after {timeout:g}s"
    code = proc.returncode if proc.returncode is not None else -1
    if code < 0:
        return code, f"was killed by signal {-code}"
    text = tail.decode(errors="replace").strip().replace("\n", " | ")
    return code, text[-OUTPUT_TAIL:]


def _failure(code: int, out: str) -> str:
    """``exited 3: <output tail>``, ``exited 1``, or ``timed out after 60s``."""
    if code < 0:
        return out
    return f"exited {code}: {out}" if out else f"exited {code}"


class Installer:
    """Runs one install at a time over :class:`Slots`; reports each step.

    ``report(state, detail)`` tells the hub (may do nothing when no channel is
    open); ``audit(type, **fields)`` writes the device's audit outbox.
    """

    def __init__(self, slots: Slots, config: InstallConfig, audit: Audit) -> None:
        self.slots = slots
        self.config = config
        self.audit = audit

    def _env(self, fw: Firmware, new: str, old: str | None) -> dict[str, str]:
        """What the agent adds to the hook's environment; the health check's whole one."""
        env = {k: os.environ[k] for k in ("PATH", "LANG", "TZ") if k in os.environ}
        env.setdefault("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        env.update(
            REMOTELER_FW_SLOT=str(self.slots.path(new)),
            REMOTELER_FW_VERSION=fw.version,
            REMOTELER_FW_OLD_SLOT=str(self.slots.path(old)) if old else "",
            REMOTELER_FW_RESTART_FILE=str(self._restart_file()),
            REMOTELER_NODE=self.config.node,
            REMOTELER_DATA_DIR=str(self.config.data_dir),
        )
        return env

    def _restart_file(self) -> Path:
        return self.slots.root / "restart-requested"

    async def install(
        self, fw: Firmware, manifest: Manifest, unpack: Callable[[Path], object], report: Report
    ) -> Result | None:
        """Unpack into the inactive slot, run the hook, switch, check health.

        Returns the final result, or None when the hook asked for a restart: the
        pending state is saved and the caller must restart the agent, whose next
        start calls :meth:`confirm_pending`.
        """
        old = self.slots.current()
        new = self.slots.inactive()
        fields: dict[str, Any] = {"version": fw.version, "rollout": fw.rollout, "slot": new}
        await report("staging", f"unpacking into slot {new}")
        try:
            slot_dir = self.slots.prepare(new)
        except OSError as exc:
            why = f"cannot empty slot {new} for the install: {exc}"
            return await self._final(fw, "failed", why, fields)
        try:
            await asyncio.to_thread(unpack, slot_dir)
        except Exception as exc:
            why = f"unpacking failed: {exc}"[:200] + self._empty(new)
            return await self._final(fw, "failed", why, fields)
        await self.audit_event("firmware.install", **fields)
        hook = manifest.install_hook
        if hook:
            await report("installing", f"running {hook}")
            self._restart_file().unlink(missing_ok=True)
            env = self._env(fw, new, old)
            env.update(
                REMOTELER_FW_NAME=manifest.name,
                REMOTELER_FW_SHA256=manifest.sha256,
                REMOTELER_FW_PREVIOUS_VERSION=(self.slots.version(old) if old else None) or "",
            )
            path = slot_dir / hook
            try:
                if not path.resolve().is_relative_to(slot_dir.resolve()):
                    raise OSError(0, "the hook is outside the slot")
                code, out = await _run(
                    [str(path), str(slot_dir)], slot_dir, env, self.config.hook_timeout
                )
            except OSError as exc:
                code, out = 127, f"cannot run: {exc.strerror}"
            if code != 0:
                reason = f"install hook {_failure(code, out)}; slot {old or 'none'} kept"
                return await self._final(fw, "rolled-back", reason + self._empty(new), fields)
        restart = self._restart_file().exists()
        self._restart_file().unlink(missing_ok=True)
        pending = Pending(
            fw.sha256,
            fw.rollout,
            fw.version,
            new,
            old,
            self.config.clock() + self.config.restart_window,
            restart,
        )
        self.slots.set_pending(pending)  # before the switch: a crash in between rolls back
        self.slots.switch(new, fw.version)
        if restart:
            await report("restarting", "the install hook asked for an agent restart")
            log.info("firmware asks for a restart", extra={"version": fw.version, "slot": new})
            return None
        return await self.confirm_pending(report)

    def _empty(self, slot: str) -> str:
        """Empty a half-installed slot: "" or why it could not be (for the result)."""
        try:
            self.slots.prepare(slot)
        except OSError as exc:
            log.warning("cannot empty firmware slot", extra={"slot": slot, "error": str(exc)})
            return f"; slot {slot} could not be emptied: {exc}"
        return ""

    async def confirm_pending(self, report: Report | None = None) -> Result | None:
        """Health-check a switched, unconfirmed slot: confirm it or switch back.

        Call at every agent start (after a restart the hook asked for, or a crash).
        Returns the result, or None if nothing was pending.
        """
        pending = self.slots.pending()
        if pending is None:
            return None
        report = report or _no_report
        fw = Firmware(pending.sha256, pending.rollout, pending.version)
        fields: dict[str, Any] = {
            "version": pending.version,
            "rollout": pending.rollout,
            "slot": pending.new,
        }
        if self.slots.current() != pending.new:  # crashed between pending and switch
            return await self._rollback(fw, pending, "the switch did not complete", fields)
        if self.config.clock() > pending.deadline:
            return await self._rollback(
                fw, pending, "the health check did not run before its deadline", fields
            )
        await report("health-check", "")
        check = self.config.health_check
        if check:
            code, out = await _run(
                ["/bin/sh", "-c", check],
                self.slots.path(pending.new),
                self._env(fw, pending.new, pending.old),
                self.config.health_timeout,
            )
            if code != 0:
                why = _failure(code, out)
                return await self._rollback(fw, pending, f"health check {why}", fields)
        self.slots.set_pending(None)
        return await self._final(fw, "installed", f"slot {pending.new}", fields)

    async def _rollback(
        self, fw: Firmware, pending: Pending, reason: str, fields: dict[str, Any]
    ) -> Result:
        self.slots.switch(pending.old)
        self.slots.set_pending(None)
        log.warning(
            "firmware rolled back", extra={"version": pending.version, "reason": reason[:200]}
        )
        await self.audit_event("firmware.rollback", reason=reason[:400], **fields)
        return await self._final(
            fw, "rolled-back", f"{reason}; back to slot {pending.old or 'none'}", fields, False
        )

    async def _final(
        self, fw: Firmware, state: str, detail: str, fields: dict[str, Any], audit: bool = True
    ) -> Result:
        result = Result(state, detail[:400], fw.version, fw.rollout)
        self.slots.set_result(fw.sha256, result)
        if state == "installed":
            await self.audit_event("firmware.installed", **fields)
        elif audit:
            event = "firmware.rollback" if state == "rolled-back" else "firmware.failed"
            await self.audit_event(event, reason=detail[:400], **fields)
        return result

    async def audit_event(self, type: str, **fields: Any) -> None:
        try:
            await self.audit(type, **fields)
        except Exception:
            log.exception("firmware audit event could not be stored", extra={"type": type})


async def _no_report(state: str, detail: str) -> None:
    return None
