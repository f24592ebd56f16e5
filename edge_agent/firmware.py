"""The agent's end of the hub-opened ``firmware`` channel: stage, verify, install, report.

The hub offers a bundle (its header first); the agent checks the signature and
its own policy (targets, versions) before a byte of payload moves, answers
with how much of that bundle it already staged (a file and its bundle's hash
under ``<data dir>/firmware/incoming``, kept across cut links and restarts),
and receives the rest. The whole file is then verified again
(``firmware_tools.bundle.verify_bundle``) and installed into the inactive slot
(:mod:`edge_agent.firmware_install`). Every state goes back to the hub on the
channel and the important ones into the audit outbox; a result is remembered
per bundle, so a hub that asks again (after a cut link or a restart) gets the
same answer instead of a second install.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from edge_agent.firmware_install import Firmware, Installer
from edge_agent.slots import Result
from remoteler.wire.aio import Channel
from remoteler.wire.exceptions import ChannelClosedError, TunnelClosed

if TYPE_CHECKING:  # the bundle checks and the transfer core load on the first offer
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from remoteler.firmware_xfer import AgentTransfer, Chunk, Offer

__all__ = ["FirmwareAgent"]

log = logging.getLogger("remoteler.agent.firmware")

READ_SIZE = 64 * 1024
#: Progress is reported at most this often (fraction of the bundle).
PROGRESS_STEP = 0.1
NO_KEY = "no firmware key is configured on this device: start the agent with --firmware-key FILE"
NO_DOWNGRADE = (
    "the hub asked for a forced downgrade or re-install ({why}); this device does not "
    "allow one: start its agent with --firmware-allow-downgrade"
)
#: Both steps a downgrade or re-install needs (the hub's push, the device's consent).
DOWNGRADE_STEPS = (
    "{why}: a downgrade or re-install needs 'tctl firmware push --force' and this "
    "device's agent started with --firmware-allow-downgrade"
)


def claimed_version(header: bytes) -> str:
    """The version a bundle header names, verified or not ("" if it names none).

    For the audit of a refusal only: a refused bundle's version is what it claims.
    """
    from firmware_tools.bundle import BundleError, split_header
    from firmware_tools.manifest import Manifest

    try:
        return Manifest.from_bytes(split_header(header).manifest_bytes).version[:64]
    except (BundleError, ValueError):
        return ""


class Staging:
    """One partial download: ``bundle.part`` and the hash of the bundle it belongs to."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.part = root / "bundle.part"
        self.meta = root / "bundle.json"

    def resume_point(self, sha256: str, size: int) -> tuple[int, Any]:
        """(bytes staged for this bundle, a sha256 object over them); drops a foreign file."""
        try:
            meta = json.loads(self.meta.read_text())
        except (OSError, ValueError):
            meta = {}
        hasher = hashlib.sha256()
        if not isinstance(meta, dict) or meta.get("sha256") != sha256 or not self.part.exists():
            self.clear()
            self.meta.write_text(json.dumps({"sha256": sha256, "size": size}))
            return 0, hasher
        with open(self.part, "r+b") as f:
            f.truncate(min(size, os.fstat(f.fileno()).st_size))
            while chunk := f.read(READ_SIZE):
                hasher.update(chunk)
            return f.tell(), hasher

    def clear(self) -> None:
        self.part.unlink(missing_ok=True)
        self.meta.unlink(missing_ok=True)


class FirmwareAgent:
    """Serves ``firmware`` channels, one install at a time."""

    def __init__(
        self,
        installer: Installer,
        trusted: list[Ed25519PublicKey],
        labels: Callable[[], Mapping[str, str]],
        agent_version: str,
        restart: Callable[[], None] | None = None,
        allow_downgrade: bool = False,
    ) -> None:
        self.installer = installer
        #: Whether the hub's ``force`` (not signed) may downgrade or re-install:
        #: the device's consent, off by default (``--firmware-allow-downgrade``).
        self.allow_downgrade = allow_downgrade
        self.slots = installer.slots
        self.trusted = trusted
        self.labels = labels
        self.agent_version = agent_version
        self.restart = restart or (lambda: os.kill(os.getpid(), signal.SIGTERM))
        self.staging = Staging(self.slots.root / "incoming")
        self._busy = asyncio.Lock()
        self._install: asyncio.Task[Result | None] | None = None

    async def start(self) -> Result | None:
        """At agent start: finish an install that was waiting for this restart."""
        result = await self.installer.confirm_pending()
        if result is not None:
            log.info("pending firmware checked", extra={"state": result.state})
        return result

    async def serve(self, channel: Channel) -> None:
        """Serve one channel until the exchange ends or the link drops; never raises."""
        from remoteler.firmware_xfer import AgentTransfer, ProtocolError, XferState

        core = AgentTransfer()
        session = _Session(self, core, channel)
        try:
            while not channel.at_eof and core.state is not XferState.DONE:
                data = await channel.read(READ_SIZE)
                if not data:
                    break
                for event in core.receive_data(data):
                    await session.handle(event)
                session.flush()
        except ProtocolError as exc:
            log.warning("bad firmware message from the hub: %s", exc)
        except (ChannelClosedError, TunnelClosed, ConnectionError):
            log.info("firmware channel lost; the hub will offer again")
        except OSError as exc:  # the data dir: full disk, permissions
            log.error("cannot stage firmware: %s", exc)
            await session.fail(f"cannot stage the bundle on the device: {exc.strerror}")
        finally:
            session.close_file()
            if session.locked:
                self._busy.release()
            session.flush()
            channel.close()

    def installing(self) -> bool:
        return self._busy.locked() or (self._install is not None and not self._install.done())

    async def _install_bundle(
        self, offer: Offer, report: Callable[[str, str], Awaitable[None]]
    ) -> Result | None:
        """Verify the staged file as a whole, then install it; the result is remembered."""
        from firmware_tools.archive import safe_extract
        from firmware_tools.bundle import BundleError, read_header, verify_bundle

        path = self.staging.part
        try:
            manifest = await asyncio.to_thread(
                verify_bundle,
                path,
                self.trusted,
                labels=self.labels(),
                installed_version=self.slots.version(),
                agent_version=self.agent_version,
                force=offer.force and self.allow_downgrade,
            )
            offset = (await asyncio.to_thread(read_header, path))[2]
        except BundleError as exc:
            self.staging.clear()
            version = claimed_version(offer.header)
            result = Result("failed", str(exc)[:400], version, offer.rollout)
            self.slots.set_result(offer.sha256, result)
            await self.installer.audit_event(
                "firmware.failed", rollout=offer.rollout, version=version, reason=str(exc)[:400]
            )
            return result
        fw = Firmware(offer.sha256, offer.rollout, manifest.version)
        try:
            outcome = await self.installer.install(
                fw, manifest, lambda slot: safe_extract(path, slot, offset=offset), report
            )
        finally:
            self.staging.clear()
        if outcome is None:
            # The hook asked for a restart. Done here, not by the channel's handler:
            # a link cut mid-install cancels that, and the pending install would then
            # wait for a restart that never comes (every later offer refused "busy").
            await asyncio.sleep(0.2)  # best effort: let "restarting" reach the hub
            log.info("restarting the agent for the firmware install")
            self.restart()
        return outcome


class _Session:
    """One channel's exchange (state the event handlers share)."""

    def __init__(self, agent: FirmwareAgent, core: AgentTransfer, channel: Channel) -> None:
        self.agent, self.core, self.channel = agent, core, channel
        self.offer: Offer | None = None
        self.file: BinaryIO | None = None
        self.hasher: Any = None
        self.version = ""
        self.resumed_from = 0
        self.reported = 0.0
        self.locked = False

    def flush(self) -> None:
        data = self.core.data_to_send()
        if data and not self.channel.is_closed:
            with contextlib.suppress(ChannelClosedError, TunnelClosed):
                self.channel.write(data)

    def close_file(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None

    async def fail(self, reason: str, version: str | None = None) -> None:
        """Report ``failed`` to the hub and audit ``firmware.failed`` with the bundle's version."""
        self.core.status("failed", reason, 0)
        offer = self.offer
        if offer is None:
            return
        if version is None:
            version = self.version or claimed_version(offer.header)
        await self.agent.installer.audit_event(
            "firmware.failed", rollout=offer.rollout, version=version, reason=reason[:400]
        )

    async def handle(self, event: object) -> None:
        from remoteler.firmware_xfer import Chunk, Finished, Offer

        if isinstance(event, Offer):
            await self._offer(event)
        elif isinstance(event, Chunk):
            self._chunk(event)
        elif isinstance(event, Finished):
            await self._finished()

    async def _offer(self, offer: Offer) -> None:
        from firmware_tools.bundle import (
            AlreadyInstalled,
            BundleError,
            DowngradeRefused,
            verify_header,
        )

        agent, core = self.agent, self.core
        self.offer = offer
        done = agent.slots.result(offer.sha256)
        if done is not None and done.rollout == offer.rollout:  # asked again: same answer
            core.status(done.state, done.detail, offer.size)
            return
        if agent.installing() or agent.slots.pending() is not None:
            core.refuse("busy with another firmware install: the hub will offer again")
            return
        if not agent.trusted:
            core.refuse(NO_KEY)
            await agent.installer.audit_event(
                "firmware.failed",
                rollout=offer.rollout,
                version=claimed_version(offer.header),
                reason=NO_KEY,
            )
            return
        try:
            manifest = verify_header(
                offer.header,
                agent.trusted,
                labels=agent.labels(),
                installed_version=agent.slots.version(),
                agent_version=agent.agent_version,
                force=offer.force and agent.allow_downgrade,
            )
        except (AlreadyInstalled, DowngradeRefused) as exc:
            if offer.force:  # forced by the hub, refused by the device
                reason = NO_DOWNGRADE.format(why=str(exc).split(":")[0][:200])
            elif isinstance(exc, AlreadyInstalled):
                core.status("installed", str(exc), offer.size)
                return
            else:
                reason = DOWNGRADE_STEPS.format(why=str(exc).split(":")[0][:200])
            await self.fail(reason)
            return
        except BundleError as exc:
            await self.fail(str(exc))
            return
        self.version = manifest.version
        if offer.size != len(offer.header) + manifest.size:  # the signed size decides
            await self.fail("the offered size does not match the bundle's manifest")
            return
        free = shutil.disk_usage(agent.slots.root).free
        need = offer.size + manifest.size  # the download, then the unpacked slot
        if free < need:
            await self.fail(
                f"not enough free space on the device: {free >> 20} MiB free, "
                f"{need >> 20} MiB needed (the bundle, then its unpacked slot)"
            )
            return
        await agent._busy.acquire()
        self.locked = True
        offset, self.hasher = await asyncio.to_thread(
            agent.staging.resume_point, offer.sha256, offer.size
        )
        self.resumed_from = offset
        self.file = open(agent.staging.part, "ab")  # noqa: SIM115, ASYNC230 - closed by close_file
        core.resume(offset, self.hasher.hexdigest())
        core.status("transferring", f"from byte {offset}", offset)
        log.info(
            "firmware offered",
            extra={"rollout": offer.rollout, "version": manifest.version, "resume_from": offset},
        )

    def _chunk(self, chunk: Chunk) -> None:
        assert self.file is not None and self.offer is not None
        if chunk.offset == 0 and self.file.tell() != 0:  # the hub did not trust our prefix
            self.file.truncate(0)
            self.file.seek(0)
            self.hasher = hashlib.sha256()
            self.resumed_from = 0
        self.file.write(chunk.data)
        self.file.flush()
        self.hasher.update(chunk.data)
        done = chunk.offset + len(chunk.data)
        size = self.offer.size
        if size and (done - self.reported) / size >= PROGRESS_STEP and done < size:
            self.reported = done
            self.core.status("transferring", f"{100 * done // size}%", done)

    async def _finished(self) -> None:
        assert self.offer is not None and self.file is not None
        agent, offer = self.agent, self.offer
        os.fsync(self.file.fileno())
        self.close_file()
        if self.hasher.hexdigest() != offer.sha256:
            agent.staging.clear()
            await self.fail("the bundle's hash does not match the offer")
            return
        await agent.installer.audit_event(
            "firmware.transfer",
            rollout=offer.rollout,
            version=self.version,
            size=offer.size,
            resumed_from=self.resumed_from,
        )
        # The install outlives this channel: a link cut mid-install must not stop it.
        task = asyncio.ensure_future(agent._install_bundle(offer, self._report))
        agent._install = task
        result = await asyncio.shield(task)
        if result is None:  # the install task restarts the agent
            return
        self.core.status(result.state, result.detail, offer.size)

    async def _report(self, state: str, detail: str) -> None:
        assert self.offer is not None
        self.core.status(state, detail, self.offer.size)
        self.flush()


async def open_firmware(
    data_dir: Path,
    node: str,
    key_files: list[str],
    health_check: str | None,
    audit: Any,
    labels: Callable[[], Mapping[str, str]],
    agent_version: str,
    allow_downgrade: bool = False,
) -> FirmwareAgent:
    """The agent's firmware service, after finishing an install a restart interrupted.

    ``key_files`` hold the trusted signing keys (``--firmware-key``, repeatable);
    ``audit`` is the agent's :class:`edge_agent.audit.AgentAudit`;
    ``allow_downgrade`` lets the hub's ``force`` downgrade or re-install.
    """
    from edge_agent.firmware_install import InstallConfig
    from edge_agent.slots import Slots
    from remoteler.audit.events import EventType

    trusted: list[Ed25519PublicKey] = []
    if key_files:  # cryptography's key parsing only when firmware is on
        from firmware_tools.keys import load_trusted_keys

        trusted = [key for path in key_files for key in load_trusted_keys(path)]

    async def emit(type: str, **fields: Any) -> None:
        await audit.emit(EventType(type), **fields)

    config = InstallConfig(node=node, data_dir=data_dir, health_check=health_check or None)
    installer = Installer(Slots(data_dir / "firmware"), config, emit)
    firmware = FirmwareAgent(
        installer, trusted, labels, agent_version, allow_downgrade=allow_downgrade
    )
    await firmware.start()
    return firmware
