"""The hub's roll-out orchestrator against real agent tunnels and the real agent side.

Each agent here is a real tunnel to a real HubServer whose ``firmware`` channels
are served by edge_agent.firmware (real files, real bundles, real hook scripts),
so canary order, the parallel limit and hostile agents are checked without
starting processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from hubkit import FakeAgent, Hub, running_hub

from edge_agent.firmware import FirmwareAgent
from edge_agent.firmware_install import InstallConfig, Installer
from edge_agent.slots import Slots
from firmware_tools.bundle import build_bundle
from firmware_tools.keys import load_signing_key, load_trusted_keys, write_key_pair
from hub.firmware.rollouts import FirmwareRollouts
from hub.storage.api import Firmware, Rollout, blob_name
from remoteler.audit.stream import encode_message
from remoteler.wire.aio import ChannelRequest
from remoteler.wire.codes import OpenFailure

HOOK = "#!/bin/sh\nexit 0\n"


class Agent(FakeAgent):
    """A real tunnel; ``firmware`` channels go to ``serve`` (a real FirmwareAgent by default)."""

    def __init__(
        self,
        name: str,
        root: Path,
        trusted: Path | None,
        labels: dict[str, str] | None = None,
        allow_downgrade: bool = False,
    ) -> None:
        self.name = name
        self.root = root
        self.log: list[tuple[str, float]] = []
        #: every audit event the device wrote: (type, fields)
        self.events: list[tuple[str, dict[str, Any]]] = []
        config = InstallConfig(node=name, data_dir=root)
        installer = Installer(Slots(root / "firmware"), config, self._audit)
        keys = load_trusted_keys(trusted) if trusted else []
        board = labels or {"board": "rpi4"}
        self.restarted = asyncio.Event()
        self.firmware = FirmwareAgent(
            installer,
            keys,
            lambda: board,
            "0.1.0",
            restart=self.restarted.set,
            allow_downgrade=allow_downgrade,
        )
        self.serve: Callable[[ChannelRequest], Awaitable[None]] = self._serve

    async def _audit(self, type: str, **fields: Any) -> None:
        self.log.append((type, time.monotonic()))
        self.events.append((type, fields))

    async def _serve(self, request: ChannelRequest) -> None:
        await self.firmware.serve(request.accept())

    async def on_channel(self, request: ChannelRequest) -> None:
        assert request.kind == "firmware"
        self.log.append(("offer", time.monotonic()))
        await self.serve(request)


class Setup:
    def __init__(self, hub: Hub, root: Path) -> None:
        self.hub, self.root = hub, root
        self.key = root / "fw.key"
        write_key_pair(self.key)
        self.bundle = root / "fw.bundle"
        self.build()
        self.trusted = Path(f"{self.key}.pub")
        self.agents: list[Agent] = []
        self.rollouts = FirmwareRollouts(hub.storage, hub.server.registry, None, interval=0.1)
        #: the roll-outs as the hub's storage has them
        self.store: Firmware = hub.storage.firmware
        self.task: asyncio.Task[None] | None = None

    def build(self, hook: str = HOOK, version: str = "1.0.0") -> None:
        """(Re)build ``self.bundle`` with this install hook and version."""
        payload = self.root / f"payload-{version}"
        payload.mkdir(exist_ok=True)
        (payload / "image").write_bytes(b"\x00" * 200_000)
        (payload / "install.sh").write_text(hook)
        (payload / "install.sh").chmod(0o755)
        self.manifest = build_bundle(
            payload,
            self.bundle,
            name="gw-fw",
            version=version,
            targets={"board": "rpi4"},
            min_agent_version="0.1.0",
            install_hook="install.sh",
            key=load_signing_key(self.key),
        )

    async def agent(
        self,
        name: str,
        trusted: bool = True,
        labels: dict[str, str] | None = None,
        allow_downgrade: bool = False,
    ) -> Agent:
        trust = self.trusted if trusted else None
        agent = Agent(name, self.root / name, trust, labels, allow_downgrade)
        await agent.dial(self.hub, agent.name)
        self.agents.append(agent)
        return agent

    async def push(
        self,
        canaries: int = 0,
        max_parallel: int = 10,
        force: bool = False,
        bundle: Path | None = None,
        start: bool = True,
        sha256: str | None = None,
        size: int | None = None,
        canary_timeout: float = 600.0,
        online: int | None = None,
        via: Firmware | None = None,
    ) -> str:
        bundle = bundle or self.bundle
        data = bundle.read_bytes() if bundle.exists() else b""
        name = blob_name(data)
        if bundle.exists():  # the hub's copy: what tctl firmware push stores
            await self.hub.storage.blobs.put(name, _chunks(data), len(data))
        rollout = Rollout(
            id="fw-test",
            created=time.time(),
            name="gw-fw",
            version=self.manifest.version,
            bundle=name,
            sha256=sha256 or hashlib.sha256(data).hexdigest(),
            size=len(data) if size is None else size,
            selector={"board": "rpi4"},
            canary_percent=None,
            max_parallel=max_parallel,
            rate=None,
            force=force,
            state="running",
            canary_timeout=canary_timeout,
        )
        nodes = []
        for i, agent in enumerate(self.agents):
            node = await self.hub.storage.nodes.get(agent.name)
            assert node is not None
            nodes.append((node.id, agent.name, i < canaries))
        await (via or self.store).create(rollout, nodes)
        # The registry knows the agents once their tunnels are up.
        live = len(self.agents) if online is None else online
        await _until(lambda: len(self.hub.server.registry.live()) == live)
        if start:
            self.task = asyncio.ensure_future(self.rollouts.run())
        return rollout.id

    async def wait_state(self, state: str, timeout: float = 20.0) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while True:
            rollout = await self.store.rollout("fw-test")
            assert rollout is not None
            if rollout.state == state:
                return {n.node_name: n.state for n in await self.store.nodes("fw-test")}
            assert time.monotonic() < deadline, f"roll-out still {rollout.state}"
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        for agent in self.agents:
            await agent.close()


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    async with running_hub(tmp_path) as hub:
        s = Setup(hub, tmp_path)
        try:
            yield s
        finally:
            await s.close()


async def test_canary_installs_before_anyone_else_is_offered_the_bundle(setup: Setup) -> None:
    for name in ("a-canary", "b", "c"):
        await setup.agent(name)
    await setup.push(canaries=1)
    states = await setup.wait_state("done")
    assert states == {"a-canary": "installed", "b": "installed", "c": "installed"}
    canary = dict(setup.agents[0].log)
    for other in setup.agents[1:]:
        offered = dict(other.log)["offer"]
        assert offered > canary["firmware.installed"]


async def test_max_parallel_limits_open_transfers(setup: Setup) -> None:
    for name in ("a", "b", "c"):
        await setup.agent(name)
    await setup.push(max_parallel=1)
    peak = 0

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max(peak, len(setup.rollouts._inflight))
            await asyncio.sleep(0.005)

    watcher = asyncio.ensure_future(watch())
    try:
        states = await setup.wait_state("done")
    finally:
        watcher.cancel()
    assert set(states.values()) == {"installed"}
    assert peak == 1
    offers = sorted(t for a in setup.agents for kind, t in a.log if kind == "offer")
    ends = sorted(t for a in setup.agents for kind, t in a.log if kind == "firmware.installed")
    assert offers[1] > ends[0] and offers[2] > ends[1]  # one after the other


async def test_hostile_and_old_agents_do_not_stop_the_others(setup: Setup) -> None:
    garbage = await setup.agent("a-garbage")
    old = await setup.agent("b-old")
    await setup.agent("c-good")

    async def send_garbage(request: ChannelRequest) -> None:
        channel = request.accept()
        channel.write(b"\xff" * 64 + encode_message({"t": "resume", "offset": -1}))
        await channel.wait_closed()

    async def unknown_kind(request: ChannelRequest) -> None:
        request.reject(OpenFailure.UNKNOWN_KIND, "unknown channel kind")

    garbage.serve, old.serve = send_garbage, unknown_kind
    await setup.push()
    store = setup.store

    async def states() -> dict[str, Any]:
        return {n.node_name: n for n in await store.nodes("fw-test")}

    deadline = time.monotonic() + 20
    while (await states())["c-good"].state != "installed" or (await states())[
        "b-old"
    ].state != "failed":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    nodes = await states()
    assert "unknown channel kind" in nodes["b-old"].detail
    assert nodes["a-garbage"].state == "pending"  # offered again later, never crashed
    assert sum(kind == "offer" for kind, _ in garbage.log) >= 1
    assert setup.task is not None and not setup.task.done()  # the orchestrator lives on


async def test_devices_refuse_before_the_download(setup: Setup) -> None:
    no_key = await setup.agent("a-no-key", trusted=False)
    other_board = await setup.agent("b-x86", labels={"board": "x86"})
    await setup.agent("c-good")
    await setup.push()
    states = await setup.wait_state("done")
    assert states == {"a-no-key": "failed", "b-x86": "failed", "c-good": "installed"}
    nodes = await _nodes(setup)
    assert "--firmware-key" in nodes["a-no-key"].detail
    assert "board=rpi4" in nodes["b-x86"].detail and "board=x86" in nodes["b-x86"].detail
    for agent in (no_key, other_board):  # refused before a byte of payload moved
        node = nodes[agent.name]
        assert (node.attempts, node.progress) == (0, 0)
        assert not (agent.root / "firmware" / "incoming" / "bundle.part").exists()


async def _nodes(setup: Setup) -> dict[str, Any]:
    return {n.node_name: n for n in await setup.store.nodes("fw-test")}


async def test_a_restart_asked_for_while_the_link_is_down_still_happens(setup: Setup) -> None:
    # The hook asks for a restart and waits; meanwhile the tunnel drops, which
    # cancels the channel's handler (Tunnel.run does): the install goes on and
    # must restart the agent itself, or the pending install blocks every offer.
    setup.build(
        '#!/bin/sh\ntouch "$REMOTELER_FW_RESTART_FILE" "$REMOTELER_DATA_DIR/hook-started"\n'
        'while [ ! -e "$REMOTELER_DATA_DIR/hook-go" ]; do sleep 0.01; done\n'
    )
    agent = await setup.agent("a")
    await setup.push()
    await _until(lambda: (agent.root / "hook-started").exists())
    await agent.close()  # the link is lost mid-hook
    (agent.root / "hook-go").touch()
    async with asyncio.timeout(10):
        await agent.restarted.wait()
    pending = agent.firmware.slots.pending()
    assert pending is not None and pending.restart and pending.version == "1.0.0"


async def test_a_forced_downgrade_needs_the_devices_consent(setup: Setup) -> None:
    # force comes from the hub and is not signed: a device that did not opt in
    # (--firmware-allow-downgrade) refuses an older (or the same) signed bundle.
    refusing = await setup.agent("a-refuses")
    consenting = await setup.agent("b-consents", allow_downgrade=True)
    for agent in (refusing, consenting):
        agent.firmware.slots.switch("a", "2.0.0")  # a newer firmware is installed
    await setup.push(force=True)
    states = await setup.wait_state("done")
    assert states == {"a-refuses": "failed", "b-consents": "installed"}
    detail = (await _nodes(setup))["a-refuses"].detail
    assert "--firmware-allow-downgrade" in detail and "older than the installed 2.0.0" in detail
    assert "\n" not in detail
    assert refusing.firmware.slots.version() == "2.0.0"
    assert [kind for kind, _ in refusing.log] == ["offer", "firmware.failed"]
    assert consenting.firmware.slots.version() == "1.0.0"


async def test_the_device_verifies_the_whole_bundle_before_it_unpacks(setup: Setup) -> None:
    # A hub (or a path) that flips a payload byte behind a valid signed header,
    # with the offer's sha256 that of the tampered file: the transfer itself
    # checks out, the device's verify of the complete file must not.
    agent = await setup.agent("a")
    agent.firmware.slots.switch("a", "0.9.0")
    data = bytearray(setup.bundle.read_bytes())
    data[-1000] ^= 0x01
    tampered = setup.root / "tampered.bundle"
    tampered.write_bytes(bytes(data))
    await setup.push(bundle=tampered)
    states = await setup.wait_state("done")
    assert states == {"a": "failed"}
    assert "does not match its signed hash" in (await _nodes(setup))["a"].detail
    assert agent.firmware.slots.current() == "a" and agent.firmware.slots.version() == "0.9.0"
    assert [kind for kind, _ in agent.log] == ["offer", "firmware.transfer", "firmware.failed"]
    assert not (agent.root / "firmware" / "slots" / "b" / "image").exists()


class _Audit:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    async def record(self, event: Any) -> None:
        self.events.append({"type": event.type, **event.fields})


async def _rollout_row(setup: Setup) -> Rollout:
    rollout = await setup.store.rollout("fw-test")
    assert rollout is not None
    return rollout


@pytest.mark.parametrize("damage", ["missing", "not-a-bundle"])
async def test_an_unreadable_hub_copy_stops_the_rollout(setup: Setup, damage: str) -> None:
    await setup.agent("a")
    audit = _Audit()
    setup.rollouts.audit = audit
    bad = setup.root / "gone.bundle"
    if damage == "not-a-bundle":
        bad.write_bytes(b"this is not a firmware bundle at all")
    await setup.push(bundle=bad)
    await setup.wait_state("stopped")
    reason = (await _rollout_row(setup)).reason
    assert reason.startswith("hub copy of the bundle unreadable: ")
    assert ("no blob" in reason) if damage == "missing" else ("bad magic" in reason)
    stops = [e for e in audit.events if e.get("type") == "firmware.rollout.stop"]
    assert len(stops) == 1 and stops[0]["reason"] == reason
    assert setup.agents[0].log == []  # never offered


async def test_a_stop_during_a_tick_wins(setup: Setup) -> None:
    # The tick read the roll-out as running; tctl firmware stop lands before it
    # starts a transfer, or before it marks the roll-out done.
    agent = await setup.agent("a")
    await setup.push(start=False)
    rollouts = setup.rollouts
    store = rollouts.store
    try:
        running = await store.rollouts("running")
        nodes = await store.nodes("fw-test")
        assert await store.finish(
            "fw-test", "stopped", "stopped with tctl firmware stop", time.time()
        )
        await rollouts._step(running[0], nodes)  # its claim fails: the roll-out stopped
        assert rollouts._inflight == {} and agent.log == []
        node = nodes[0]
        assert (await store.nodes("fw-test"))[0].claims == node.claims == 0
        await store.update_node("fw-test", node.node_id, "installed", "slot a", time.time())
        await rollouts._step(running[0], await store.nodes("fw-test"))  # all final now
        assert not await store.finish("fw-test", "done", "", time.time())
        rollout = await store.rollout("fw-test")
        assert rollout is not None
        assert (rollout.state, rollout.reason) == ("stopped", "stopped with tctl firmware stop")
    finally:
        await rollouts.close()


def _failed(agent: Agent) -> list[dict[str, Any]]:
    return [fields for kind, fields in agent.events if kind == "firmware.failed"]


@pytest.mark.parametrize("refusal", ["hash", "size", "space"])
async def test_every_refusal_is_audited_with_the_bundles_version(
    setup: Setup, refusal: str
) -> None:
    root = setup.root / "a"
    root.mkdir()
    if refusal == "space":  # the device's data dir on a small file system, filled up
        mount = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "rmtl-fw-full", str(root)],
            capture_output=True,
            text=True,
        )
        assert mount.returncode == 0, f"mount -t tmpfs failed (run as root): {mount.stderr}"
    try:
        agent = await setup.agent("a")
        if refusal == "space":
            with open(root / "filler", "wb") as f, contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
        size = setup.bundle.stat().st_size
        if refusal == "hash":  # the bytes that arrive are not the ones offered
            await setup.push(sha256="0" * 64)
        elif refusal == "size":
            await setup.push(size=size + 1)
        else:
            await setup.push()
        assert await setup.wait_state("done") == {"a": "failed"}
        detail = (await _nodes(setup))["a"].detail
        want = {
            "hash": "hash does not match the offer",
            "size": "size does not match",
            "space": "not enough free space",
        }[refusal]
        assert want in detail
        failed = _failed(agent)
        assert len(failed) == 1, agent.events
        assert failed[0]["version"] == "1.0.0" and want in failed[0]["reason"]
        assert failed[0]["rollout"] == "fw-test"
    finally:
        await setup.close()
        setup.agents.clear()
        if refusal == "space":
            subprocess.run(["umount", str(root)], check=True)


async def test_refusals_before_the_download_carry_the_claimed_version(setup: Setup) -> None:
    no_key = await setup.agent("a-no-key", trusted=False)
    x86 = await setup.agent("b-x86", labels={"board": "x86"})
    older = await setup.agent("c-newer-installed")
    older.firmware.slots.switch("a", "2.0.0")
    await setup.push()
    await setup.wait_state("done")
    for agent in (no_key, x86, older):
        failed = _failed(agent)
        assert [f["version"] for f in failed] == ["1.0.0"], agent.name
    # A downgrade names both steps it needs: the push's and the device's.
    reason = _failed(older)[0]["reason"]
    assert "tctl firmware push --force" in reason and "--firmware-allow-downgrade" in reason
    assert "older than the installed 2.0.0" in reason


async def test_an_offline_canary_is_replaced_after_the_canary_timeout(setup: Setup) -> None:
    gone = await setup.agent("a-canary")
    await gone.close()
    spare = await setup.agent("b")
    await setup.agent("c")
    off = await setup.agent("d-off")
    await off.close()
    await setup.push(canaries=1, canary_timeout=1.0, online=2)
    deadline = time.monotonic() + 20
    while True:
        nodes = await _nodes(setup)
        if nodes["b"].state == nodes["c"].state == "installed":
            break
        assert time.monotonic() < deadline, {n: (v.state, v.detail) for n, v in nodes.items()}
        await asyncio.sleep(0.05)
    assert nodes["b"].canary and not nodes["a-canary"].canary
    for name in ("a-canary", "d-off"):  # says what blocks it, not "pending 0%"
        assert nodes[name].state == "offline"
        assert nodes[name].detail.startswith("offline since "), nodes[name].detail
    assert "replaced as canary by b" in nodes["a-canary"].detail
    offered_c = dict(setup.agents[2].log)["offer"]
    assert offered_c > dict(spare.log)["firmware.installed"]  # b was the canary
    assert (await _rollout_row(setup)).state == "running"  # the offline ones get it later


async def test_an_offline_canary_nobody_can_replace_stops_the_rollout(setup: Setup) -> None:
    gone = await setup.agent("a-canary")
    await gone.close()
    started = time.monotonic()
    await setup.push(canaries=1, canary_timeout=0.5, online=0)
    await setup.wait_state("stopped")
    assert time.monotonic() - started >= 0.5
    reason = (await _rollout_row(setup)).reason
    assert reason.startswith("canary a-canary offline since "), reason
    assert "--canary-timeout 0.5 s" in reason and "no other online node" in reason


async def test_a_state_reported_after_the_ticks_read_is_not_overwritten_as_offline(
    setup: Setup,
) -> None:
    # The tick read the node as 'transferring'; meanwhile its transfer reported
    # 'restarting' and ended (the device reboots into the new slot, its tunnel gone).
    # The stale read must not turn that into 'offline' (then 'pending' and a new offer).
    gone = await setup.agent("a")
    await gone.close()
    await setup.push(start=False, online=0)
    rollouts = setup.rollouts
    store = rollouts.store
    try:
        (rollout,) = await store.rollouts("running")
        (node,) = await store.nodes("fw-test")
        await store.update_node(
            "fw-test", node.node_id, "transferring", "from byte 0", time.time(), progress=0
        )
        stale = await store.nodes("fw-test")
        await store.update_node("fw-test", node.node_id, "restarting", "into slot a", time.time())
        await rollouts._presence(rollout, stale)
        (now,) = await store.nodes("fw-test")
        assert (now.state, now.detail) == ("restarting", "into slot a")
    finally:
        await rollouts.close()


async def test_a_node_never_seen_is_looked_up_once_not_every_tick(setup: Setup) -> None:
    # A roll-out to many devices that joined but never connected must not query the
    # hub's database for each of them every second.
    from hub.storage.api import Node

    storage = setup.hub.server.registry.storage
    await storage.nodes.add(Node("id-never", "never", {"board": "rpi4"}, version="0.1.0"))
    await setup.push(start=False, online=0)  # no agent: an empty roll-out, then one node
    rollouts = setup.rollouts
    store = rollouts.store
    real, calls = storage.nodes.get, []

    async def counted(node_id: str) -> Any:
        calls.append(node_id)
        return await real(node_id)

    storage.nodes.get = counted  # type: ignore[method-assign]
    try:
        rollout = dataclasses.replace(
            (await store.rollouts("running"))[0], id="fw-never", canary_timeout=3600.0
        )
        await store.create(rollout, [("id-never", "never", True)])
        for _ in range(3):
            await rollouts._presence(rollout, await store.nodes("fw-never"))
        (node,) = await store.nodes("fw-never")
        assert (node.state, node.detail) == ("offline", "offline, never connected")
        assert calls == ["id-never"]
    finally:
        storage.get_node = real  # type: ignore[method-assign]
        await rollouts.close()


async def test_the_hubs_own_downtime_does_not_count_against_an_offline_canary(
    setup: Setup,
) -> None:
    # The hub was down for an hour (an upgrade): its canary's last heartbeat and the
    # push are an hour old, and no agent has reconnected yet when the hub starts.
    # The canary gets its --canary-timeout from the hub's start, not zero.
    from hub.storage.api import Node

    hour_ago = time.time() - 3600
    storage = setup.hub.server.registry.storage
    await storage.nodes.add(
        Node("id-late", "late", {"board": "rpi4"}, version="0.1.0", last_seen=hour_ago)
    )
    await setup.push(start=False, online=0)  # no agent: an empty roll-out, then one node
    store = setup.store
    rollout = dataclasses.replace(
        (await store.rollouts("running"))[0], created=hour_ago, canary_timeout=1.0
    )
    await store.finish("fw-test", "done", "", time.time())
    await store.create(dataclasses.replace(rollout, id="fw-late"), [("id-late", "late", True)])
    started = time.monotonic()
    setup.task = asyncio.ensure_future(setup.rollouts.run())
    deadline = started + 20
    while True:
        late = await store.rollout("fw-late")
        assert late is not None
        if late.state != "running":
            break
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert time.monotonic() - started >= 1.0, late.reason
    assert late.state == "stopped" and late.reason.startswith("canary late offline since ")


async def test_a_push_through_another_storage_wakes_the_orchestrator(
    setup: Setup, tmp_path: Path
) -> None:
    # Another hub on the same storage (or tctl's hub) writes the roll-out: it arrives
    # on this hub's change feed, long before the orchestrator's next look by the clock.
    from hub.storage.sqlite import open_sqlite

    await setup.agent("a")
    setup.rollouts.interval = 60.0
    setup.task = asyncio.ensure_future(setup.rollouts.run())
    await asyncio.sleep(0.2)  # its first look: nothing running
    other = await open_sqlite(tmp_path / "hubdata")
    try:
        started = time.monotonic()
        await setup.push(start=False, via=other.firmware)
        assert await setup.wait_state("done") == {"a": "installed"}
        assert time.monotonic() - started < 30
    finally:
        await other.close()


async def test_a_node_another_hub_claimed_is_not_offered_here(setup: Setup) -> None:
    # Both hubs read the node as pending; the other hub's claim landed first.
    agent = await setup.agent("a")
    await setup.push(start=False)
    rollouts, store = setup.rollouts, setup.store
    try:
        (rollout,) = await store.rollouts("running")
        stale = await store.nodes("fw-test")
        assert await store.claim("fw-test", stale[0].node_id, stale[0].claims, time.time())
        await rollouts._step(rollout, stale)
        assert rollouts._inflight == {} and agent.log == []
        await rollouts._step(rollout, await store.nodes("fw-test"))  # a fresh read: its turn
        assert list(rollouts._inflight) == [("fw-test", stale[0].node_id)]
    finally:
        await rollouts.close()


# -- several hubs: only the holder of the firmware-orchestration lease decides --------


@contextlib.asynccontextmanager
async def _two_hubs(setup: Setup, audit: _Audit) -> AsyncIterator[FirmwareRollouts]:
    """Two orchestrators on one storage, as two hubs have, each gated by its own
    Singleton of one lease; hub A's holds it. ``setup.rollouts`` is hub B's (it runs
    with ``setup.push``); hub A's is yielded, for the test to start when it wants."""
    from hub.singleton import Singleton

    leases = setup.hub.storage.leases
    lease_a = Singleton(leases, "firmware-orchestration", "hub-a", ttl=0.3)
    lease_b = Singleton(leases, "firmware-orchestration", "hub-b", ttl=0.3)
    holding = [asyncio.ensure_future(lease_a.run())]
    await _until(lambda: lease_a.held)
    holding.append(asyncio.ensure_future(lease_b.run()))
    hub_a = FirmwareRollouts(setup.hub.storage, setup.hub.server.registry, audit, interval=0.1)
    hub_a.may_orchestrate = lambda: lease_a.held
    setup.rollouts.may_orchestrate = lambda: lease_b.held
    setup.rollouts.audit = audit
    try:
        yield hub_a
    finally:
        for task in holding:
            task.cancel()
        await asyncio.gather(*holding, return_exceptions=True)
        await hub_a.close()


async def _rollout_state_for(setup: Setup, seconds: float) -> set[str]:
    """The roll-out's states seen over ``seconds`` (the orchestrators tick every 0.1 s)."""
    seen = set()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        seen.add((await _rollout_row(setup)).state)
        await asyncio.sleep(0.05)
    return seen


async def test_a_failed_canary_stops_the_rollout_only_at_the_lease_holder(setup: Setup) -> None:
    # Hub B (no lease) runs the canary's step and the canary refuses the bundle. The
    # roll-out's decision (stop) is hub A's: until hub A runs, nothing more happens, and
    # hub B never offers the bundle to the rest of the fleet on its own.
    canary = await setup.agent("a-no-key", trusted=False)
    rest = await setup.agent("b")
    audit = _Audit()
    async with _two_hubs(setup, audit) as hub_a:
        await setup.push(canaries=1)
        deadline = time.monotonic() + 20
        while (await _nodes(setup))["a-no-key"].state != "failed":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        assert canary.log[0][0] == "offer", "hub B ran the node's step"
        assert await _rollout_state_for(setup, 1.0) == {"running"}, "hub B did not stop it"
        assert rest.log == [] and audit.events == []
        task = asyncio.ensure_future(hub_a.run())
        try:
            await setup.wait_state("stopped")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    reason = (await _rollout_row(setup)).reason
    assert reason.startswith("canary a-no-key failed"), reason
    assert [e["type"] for e in audit.events] == ["firmware.rollout.stop"]
    assert rest.log == [], "never offered"


async def test_a_rollout_ends_only_at_the_lease_holder(setup: Setup) -> None:
    # Hub B (no lease) installs every node it holds; marking the roll-out done is hub A's.
    for name in ("a", "b"):
        await setup.agent(name)
    audit = _Audit()
    async with _two_hubs(setup, audit) as hub_a:
        await setup.push()
        deadline = time.monotonic() + 20
        while {n.state for n in (await _nodes(setup)).values()} != {"installed"}:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        assert await _rollout_state_for(setup, 1.0) == {"running"}
        task = asyncio.ensure_future(hub_a.run())
        try:
            assert await setup.wait_state("done") == {"a": "installed", "b": "installed"}
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert [e["type"] for e in audit.events] == ["firmware.rollout.done"]


async def test_the_holder_counts_a_node_another_hub_holds_as_online(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A node connected to another hub (a live presence lease of that hub's) is online
    # for the orchestrating hub: not shown offline, its canary never timed out.
    from hub.firmware import rollouts as module
    from hub.storage.api import Node

    monkeypatch.setattr(module, "PRESENCE_EVERY", 0.0)  # read presence at every tick
    storage = setup.hub.storage
    await storage.nodes.add(Node("id-far", "far", {"board": "rpi4"}, version="0.1.0"))
    await setup.push(start=False, online=0)  # no agent here: an empty roll-out, then one
    rollout = dataclasses.replace(
        (await setup.store.rollouts("running"))[0], id="fw-far", canary_timeout=0.2
    )
    await setup.store.create(rollout, [("id-far", "far", True)])
    await storage.presence.beat("id-far", "hub-other", time.time() + 20)
    rollouts = setup.rollouts
    try:
        for _ in range(3):
            await rollouts.tick()
            await asyncio.sleep(0.1)  # past the canary timeout
        (node,) = await setup.store.nodes("fw-far")
        assert node.state == "pending", node
        assert (await setup.store.rollout("fw-far")).state == "running"  # type: ignore[union-attr]
        await storage.presence.drop("id-far", "hub-other")  # that hub lost it
        await rollouts.tick()  # offline now, and its canary timeout long past
        (node,) = await setup.store.nodes("fw-far")
        assert node.state == "offline", node
        reason = (await setup.store.rollout("fw-far")).reason  # type: ignore[union-attr]
        assert reason.startswith("canary far offline, never connected, more than"), reason
    finally:
        await rollouts.close()
