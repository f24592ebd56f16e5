"""200 lightweight agents (one process, real TLS, websockets, heartbeats) come back after
the hub is killed and restarted, while ``tsh ls`` keeps answering."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

from fleet import Fleet, provision
from helpers import Cluster, free_port, wait_for

AGENTS = 200


class FleetThread:
    """A Fleet on its own event loop in a thread, cancelled by stop()."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.loop = asyncio.new_event_loop()
        self.task: asyncio.Task[None] | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.task = self.loop.create_task(self.fleet.run(None, ramp=1.0))
        try:
            self.loop.run_until_complete(self.task)
        except asyncio.CancelledError:
            pass
        finally:
            self.loop.close()

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        if self.task is not None:
            self.loop.call_soon_threadsafe(self.task.cancel)
        self.thread.join(timeout=30)


def test_200_agents_reconnect_after_hub_restart(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, free_port())
    cluster.start_hub()
    fleet_thread = None
    try:
        cluster.add_user("ops", ["root"])
        assert cluster.login("ops").returncode == 0
        identities = tmp_path / "identities.jsonl"
        provision(cluster, AGENTS, identities)
        fleet = Fleet(
            cluster.addr,
            [json.loads(x) for x in identities.read_text().splitlines()],
            (cluster.data / "ca" / "host_ca.crt").read_bytes(),
            heartbeat=5.0,
        )
        fleet.backoff = type(fleet.backoff)(base=0.5, cap=4.0, stable_after=30.0)
        fleet_thread = FleetThread(fleet)
        fleet_thread.start()
        wait_for(lambda: fleet.connected == AGENTS, timeout=120, what="all agents up")

        cluster.kill_hub()  # SIGKILL: no drain, every agent finds out on its own
        wait_for(lambda: fleet.connected == 0, timeout=30, what="agents to notice")
        cluster.start_hub()
        answers: list[tuple[int, int]] = []
        deadline = time.monotonic() + 120
        while fleet.connected < AGENTS:
            assert time.monotonic() < deadline, f"only {fleet.connected} agents back"
            ls = cluster.tsh("ls", "--format", "json", timeout=30)
            assert ls.returncode == 0, ls.stderr  # the hub answers users during the storm
            online = sum(1 for n in json.loads(ls.stdout) if n["online"])
            answers.append((online, fleet.connected))
        final = json.loads(cluster.tsh("ls", "--format", "json").stdout)
        assert len(final) == AGENTS and all(n["online"] for n in final)
        assert answers, "tsh ls was never run during the reconnects"
    finally:
        if fleet_thread is not None:
            fleet_thread.stop()
        cluster.stop()
