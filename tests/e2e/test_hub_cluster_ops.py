"""Operating a cluster of hubs (docs/cluster.md): a SIGTERM'd hub's agents move to
other hubs before it closes while sessions keep working, and ``hub start --workers N``
runs N members sharing one port. Real hubs on a real PostgreSQL, real agents and tsh."""

from __future__ import annotations

import json
import os
import pwd
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from clusterkit import HubCluster
from helpers import BIN, Cluster, free_port, stop_process, wait_for
from pgkit import PgServer

ME = pwd.getpwuid(os.geteuid()).pw_name


@pytest.mark.timeout(400)
def test_sigterm_moves_agents_to_other_hubs_before_the_hub_closes(
    pg_server: PgServer, tmp_path: Path
) -> None:
    cluster = HubCluster(
        tmp_path, 0, storage_url=pg_server.new_database(), hub_flags=("--shutdown-grace", "20")
    )
    relay: subprocess.Popen[bytes] | None = None
    try:
        cluster.start_all()
        cluster.add_user("alice", [ME])
        for name in ("dev0", "dev1"):
            cluster.start_agent(name, "env=test", hub=cluster.members[0].addr)
        wait_for(
            lambda: (
                all(len(h) == 2 for h in cluster.holders().values()) and len(cluster.holders()) == 2
            ),
            timeout=60,
            what="both nodes on two hubs",
        )
        ident = cluster.sign("alice", tmp_path / "alice.identity")
        # a session relayed by hub 0 keeps it draining (its grace) while we watch
        relay = subprocess.Popen(
            [
                str(BIN / "tsh"),
                *("-i", str(ident), "--proxy", cluster.members[0].addr),
                *("ssh", f"{ME}@dev0", "sleep 60"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=cluster.env(),
        )
        hub0_log = tmp_path / "hub-0.log"
        wait_for(
            lambda: "session relay start" in hub0_log.read_text(),
            timeout=30,
            what="the session relayed by hub 0",
        )
        failures: list[str] = []
        attempts = 0
        stop = threading.Event()

        def loop() -> None:
            nonlocal attempts
            while not stop.is_set():
                for name in ("dev0", "dev1"):
                    for member in cluster.members[1:]:
                        out = cluster.ssh(ident, member.addr, f"{ME}@{name}", "true")
                        attempts += 1
                        if out.returncode != 0:
                            failures.append(f"{name} via {member.id}: {out.stderr.strip()}")

        thread = threading.Thread(target=loop)
        thread.start()
        try:
            draining = cluster.members[0].proc
            assert draining is not None
            cluster.tctl_hub = 1
            draining.send_signal(signal.SIGTERM)
            # while hub 0 still runs (draining): an idle agent moved to hubs 1 and 2 at
            # once; the one whose tunnel carries the relayed session keeps it for the
            # session's grace, and hub 0 no longer claims it (its other tunnel serves)
            wait_for(
                lambda: (
                    (held := cluster.holders())["dev1"] == ["hub-1", "hub-2"]
                    and "hub-0" not in held["dev0"]
                    and len(held["dev0"]) == 1
                ),
                timeout=15,
                what="dev1 moved to hub-1 and hub-2, dev0 on its other hub",
            )
            assert draining.poll() is None, "the hub closed before its agents had moved"
            assert [h["id"] for h in cluster.hubs()] == ["hub-1", "hub-2"]
            assert relay.poll() is None, "the drain cut a session within its grace"
            time.sleep(2)
            stop_process(relay)  # the session ends: hub 0 lets dev0's tunnel go
            wait_for(
                lambda: cluster.holders()["dev0"] == ["hub-1", "hub-2"],
                timeout=15,
                what="dev0 moved too once its session ended",
            )
            time.sleep(2)
        finally:
            stop.set()
            thread.join(timeout=120)
        assert attempts > 0 and failures == [], failures[:5]
        assert draining.wait(timeout=40) == 0
        cluster.members[0].proc = None
    finally:
        if relay is not None:
            stop_process(relay)
        cluster.stop()


@pytest.mark.timeout(300)
def test_workers_share_one_port_and_relay_between_them(pg_server: PgServer, tmp_path: Path) -> None:
    port, peer_port = free_port(), free_port()
    while peer_port + 1 == port:
        peer_port = free_port()
    passphrase = tmp_path / "ca.passphrase"
    passphrase.write_text("workers test passphrase\n")
    passphrase.chmod(0o600)
    cluster = Cluster(tmp_path, port)
    cluster.start_hub(
        "--workers",
        "2",
        "--peer-listen",
        f"127.0.0.1:{peer_port}",
        "--storage",
        pg_server.new_database(),
        "--ca-passphrase-file",
        str(passphrase),
        "--hub-id",
        "hubw",
    )
    supervisor = cluster.hub
    assert supervisor is not None
    try:
        wait_for(
            lambda: (
                sorted(h["id"] for h in cluster.tctl_json("status")["hubs"])
                == ["hubw-w0", "hubw-w1"]
            ),
            timeout=60,
            what="two workers registered",
        )
        cluster.tctl("cluster", "set", "--agent-connections", "1")  # hops are likely
        cluster.add_user("alice", [ME])
        for name in ("dev0", "dev1"):
            cluster.start_agent(name, "env=test")
        wait_for(
            lambda: (
                {n["name"]: len(n["hubs"]) for n in cluster.tctl_json("nodes", "ls")}
                == {"dev0": 1, "dev1": 1}
            ),
            timeout=60,
            what="each node on one worker",
        )
        assert cluster.login("alice").returncode == 0
        for i in range(10):
            for name in ("dev0", "dev1"):
                out = cluster.tsh("ssh", f"{ME}@{name}", "echo", f"{name}-{i}")
                assert out.returncode == 0 and out.stdout.strip() == f"{name}-{i}", out.stderr
        log = (tmp_path / "hub.log").read_text()
        assert "peer relay start" in log, "20 sessions and none landed on the other worker"
        worker_pids = [
            int(p)
            for p in subprocess.run(
                ["pgrep", "-P", str(supervisor.pid)], capture_output=True, text=True
            ).stdout.split()
        ]
        assert len(worker_pids) == 2
        started = {h["id"]: h["started"] for h in cluster.tctl_json("status")["hubs"]}
        os.kill(worker_pids[0], signal.SIGKILL)  # the supervisor starts it again
        wait_for(
            lambda: (
                len(
                    subprocess.run(
                        ["pgrep", "-P", str(supervisor.pid)], capture_output=True, text=True
                    ).stdout.split()
                )
                == 2
                and worker_pids[0]
                not in [
                    int(p)
                    for p in subprocess.run(
                        ["pgrep", "-P", str(supervisor.pid)], capture_output=True, text=True
                    ).stdout.split()
                ]
            ),
            timeout=30,
            what="the killed worker started again",
        )

        # back in the cluster under its id: a new start time (the killed one's record
        # stays live until its lease lapses, so the id alone says nothing)
        def restarted() -> bool:
            proc = cluster.tctl("status", "--format", "json", check=False)
            if proc.returncode != 0:  # it reached the worker being killed or started
                return False
            now = {h["id"]: h["started"] for h in json.loads(proc.stdout)["hubs"]}
            return now.keys() == started.keys() and sum(now[k] != started[k] for k in now) == 1

        wait_for(restarted, timeout=60, what="the restarted worker registered")
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(timeout=60) == 0
        cluster.hub = None
    finally:
        cluster.stop()
