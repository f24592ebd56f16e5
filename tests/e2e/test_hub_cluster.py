"""Several hubs, one fleet: three real hubs on one PostgreSQL, HAProxy in TCP
passthrough in front, four agents keeping two tunnels each (docs/cluster.md).

The module shares one cluster (joining and starting cost more than each test); every
test leaves the three hubs running and every node held by two of them.
"""

from __future__ import annotations

import itertools
import os
import pwd
import re
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from clusterkit import HubCluster
from fwkit import signed_bundle
from haproxykit import HAProxy
from helpers import BIN, stop_process, wait_for
from outboxkit import seed_outbox
from pgkit import PgServer

from firmware_tools.keys import write_key_pair

ME = pwd.getpwuid(os.geteuid()).pw_name
NODES = ("dev0", "dev1", "dev2", "dev3")
HEALTH = "true"
HOOK = """#!/bin/sh
echo "$REMOTELER_FW_VERSION" >> "$REMOTELER_DATA_DIR/installs"
"""


@dataclass
class Fleet:
    cluster: HubCluster
    lb: HAProxy
    pg: PgServer
    db: str
    ident: Path


def _agent(cluster: HubCluster, name: str, lb: str) -> None:
    cluster.start_agent(
        name,
        f"board=rpi4,dev={name}",
        None,
        "--firmware-key",
        str(cluster.root / "fw.key.pub"),
        "--firmware-health-check",
        HEALTH,
        hub=lb,
    )


def _fully_held(cluster: HubCluster, names: tuple[str, ...] = NODES, want: int = 2) -> bool:
    held = cluster.holders()
    return all(len(held.get(name, [])) >= want for name in names)


@pytest.fixture(scope="module")
def fleet(pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("cluster")
    url = pg_server.new_database()
    cluster = HubCluster(root, 0, storage_url=url, hub_flags=("--shutdown-grace", "3"))
    lb: HAProxy | None = None
    try:
        cluster.start_all()
        lb = HAProxy.start([m.addr for m in cluster.members])
        cluster.front = lb.addr
        cluster.add_user("alice", [ME])
        write_key_pair(root / "fw.key")
        cluster.tctl("firmware", "trust", str(root / "fw.key.pub"))
        pin = cluster.ca_pin()
        cluster.ca_pin = lambda: pin  # type: ignore[method-assign]
        for name in NODES:
            _agent(cluster, name, lb.addr)
        wait_for(lambda: _fully_held(cluster), timeout=60, what="every node on two hubs")
        ident = cluster.sign("alice", root / "alice.identity")
        yield Fleet(cluster, lb, pg_server, url.rsplit("/", 1)[1], ident)
    finally:
        cluster.stop()
        if lb is not None:
            lb.stop()


def _ssh(fleet: Fleet, hub: str, node: str, *command: str) -> subprocess.CompletedProcess[str]:
    return fleet.cluster.ssh(fleet.ident, hub, f"{ME}@{node}", *command, timeout=60)


def _restore(fleet: Fleet) -> None:
    """Start any stopped hub again; wait until every node is on two hubs."""
    cluster = fleet.cluster
    for member in cluster.members:
        if member.proc is None:
            cluster.start_hub(index=member.index)
    # each poll is a tctl process: twice a second, not back to back
    wait_for(
        lambda: len(cluster.hubs()) == cluster.count, timeout=60, interval=0.5, what="three hubs"
    )
    wait_for(
        lambda: _fully_held(cluster), timeout=60, interval=0.5, what="every node on two hubs again"
    )


@pytest.mark.timeout(300)  # the module's cluster starts in the first test
def test_status_lists_hubs_and_nodes_show_their_holders(fleet: Fleet) -> None:
    cluster = fleet.cluster
    hubs = cluster.hubs()
    assert [h["id"] for h in hubs] == ["hub-0", "hub-1", "hub-2"]
    assert {h["addr"] for h in hubs} == {m.addr for m in cluster.members}
    assert sum(h["agents"] for h in hubs) == 2 * len(NODES)
    text = cluster.tctl("status").stdout
    assert "Hubs:     3" in text and "hub-0 *" in text, text
    held = cluster.holders()
    for name in NODES:
        assert len(set(held[name])) == 2, held  # two distinct hubs each
    assert "Hubs" in cluster.tctl("nodes", "ls").stdout


def test_every_node_through_every_hub_with_peer_hops(fleet: Fleet) -> None:
    cluster = fleet.cluster
    held = cluster.holders()
    hops = 0
    for member in cluster.members:
        for name in NODES:
            out = _ssh(fleet, member.addr, name, "echo", f"hello-{name}")
            assert out.returncode == 0, (member.id, name, out.stderr)
            assert out.stdout.strip() == f"hello-{name}"
            hops += member.id not in held[name]
    assert hops >= len(NODES) - 1  # each node is held by 2 of 3 hubs: the third hops
    relays = sum(
        (cluster.root / f"hub-{i}.log").read_text().count("peer relay start") for i in range(3)
    )
    assert relays >= hops


def test_lock_on_one_hub_ends_a_session_relayed_by_another_within_a_second(
    fleet: Fleet, tmp_path: Path
) -> None:
    cluster = fleet.cluster
    out, err = tmp_path / "out", tmp_path / "err"
    relay = cluster.members[1]
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        live = subprocess.Popen(
            [
                str(BIN / "tsh"),
                *("-i", str(fleet.ident), "--proxy", relay.addr),
                *("ssh", f"{ME}@dev0", "echo started; sleep 120"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            env=cluster.env(),
        )
    try:
        wait_for(lambda: b"started" in out.read_bytes(), timeout=30, what="session running")
        cluster.tctl_hub = 0  # the lock is made through hub 0
        lock = cluster.tctl_json("lock", "--user", "alice", "--message", "cluster lock test")
        made = time.monotonic()
        live.wait(timeout=30)
        took = time.monotonic() - made
    finally:
        stop_process(live)
    cluster.tctl("unlock", lock["id"])
    assert live.returncode != 0
    assert "cluster lock test" in err.read_text()
    assert took < 1.0, f"the lock took {took:.2f}s to end the session on another hub"
    wait_for(lambda: _ssh(fleet, relay.addr, "dev0", "true").returncode == 0, what="unlocked")


def test_a_role_changed_through_one_hub_applies_at_another_at_once(fleet: Fleet) -> None:
    cluster = fleet.cluster
    role = cluster.root / "deny-role.toml"

    def put_role(denied: str) -> None:
        role.write_text(
            f'kind = "role"\nname = "limited"\n[deny]\nnode_labels = {{ dev = ["{denied}"] }}\n'
        )
        cluster.tctl("create", "-f", str(role))

    put_role("none")
    cluster.add_user("bob", [ME], roles="access,limited")
    bob = cluster.sign("bob", cluster.root / "bob.identity")
    far = cluster.members[2].addr
    assert cluster.ssh(bob, far, f"{ME}@dev1", "true").returncode == 0
    cluster.tctl_hub = 1
    try:
        put_role("dev1")  # through hub 1 ...
        refused = cluster.ssh(bob, far, f"{ME}@dev1", "true")  # ... at hub 2, at once
        assert refused.returncode != 0, "the role changed on hub 1 did not apply at hub 2"
        assert "Traceback" not in refused.stderr
        allowed = cluster.ssh(bob, far, f"{ME}@dev2", "true")
        assert allowed.returncode == 0, allowed.stderr
    finally:
        cluster.tctl_hub = 0


def _loop(
    fleet: Fleet, results: list[tuple[str, float, float, int, str]], stop: threading.Event
) -> None:
    while not stop.is_set():
        for name in NODES:
            start = time.monotonic()
            out = _ssh(fleet, fleet.lb.addr, name, "true")
            results.append((name, start, time.monotonic(), out.returncode, out.stderr.strip()))


#: How long sessions are watched after a hub is killed, at most (:func:`_watch_failover`).
FAILOVER_WINDOW = 12.0
SLOT_ON = re.compile(r"tunnel is on hub slot=(\d+) .*\bhub_id=(hub-\d+)")
SLOT_DOWN = re.compile(r"tunnel down slot=(\d+)")


def _tunnels_on(cluster: HubCluster, name: str) -> set[str]:
    """The hubs the agent's tunnels are on now, by its log."""
    up: dict[int, str] = {}
    for line in (cluster.root / f"agent-{name}.log").read_text(errors="replace").splitlines():
        if m := SLOT_ON.search(line):
            up[int(m[1])] = m[2]
        elif m := SLOT_DOWN.search(line):
            up.pop(int(m[1]), None)
    return set(up.values())


def _watch_failover(
    cluster: HubCluster, results: list[tuple[str, float, float, int, str]], dead: str, end: float
) -> None:
    """Let the loops run through the failover from hub ``dead``: until every agent has
    both tunnels on live hubs again (until then a hub may pick ``dead`` by its stale
    presence and must reroute; after, both hubs left hold every node), then until a
    session reached every node; or until ``end`` (an agent may avoid a hub that failed
    it for 30 s, edge_agent/hubset.py FAILED_AVOID), whichever comes first."""
    rehomed: list[float] = []

    def over() -> bool:
        now = time.monotonic()
        if not rehomed and all(len(_tunnels_on(cluster, n) - {dead}) >= 2 for n in NODES):
            rehomed.append(now)
        reached = {r[0] for r in results if rehomed and r[1] > rehomed[0]}
        return reached >= set(NODES) or now >= end

    wait_for(over, timeout=end - time.monotonic() + 10, interval=0.1, what="the failover")


@pytest.mark.timeout(600)
def test_kill9_each_hub_in_turn_under_a_loop_through_the_load_balancer(fleet: Fleet) -> None:
    """No connection refused for a node whose second tunnel is up; a session in flight
    through the killed hub may end (with a message), nothing started after the kill fails."""
    cluster = fleet.cluster
    for victim in range(cluster.count):
        results: list[tuple[str, float, float, int, str]] = []
        stop = threading.Event()
        loops = [threading.Thread(target=_loop, args=(fleet, results, stop)) for _ in range(2)]
        for thread in loops:
            thread.start()
        try:
            # sessions are under way when the hub dies
            wait_for(lambda: len(results) >= 2, timeout=60, what="the loops' sessions")  # noqa: B023
            killed_at = time.monotonic()
            cluster.kill(victim)
            _watch_failover(cluster, results, f"hub-{victim}", killed_at + FAILOVER_WINDOW)
        finally:
            stop.set()
            for thread in loops:
                thread.join(timeout=120)
        after = [r for r in results if r[1] > killed_at]
        failed_after = [r for r in after if r[3] != 0]
        in_flight = [r for r in results if r[1] <= killed_at <= r[2] and r[3] != 0]
        assert after, "the loop made no attempt after the kill"
        assert failed_after == [], f"hub-{victim} killed: {failed_after[:5]}"
        for row in in_flight:  # cut, not hung, and said so
            assert row[4] and "Traceback" not in row[4], row
        _restore(fleet)


COUNTER = re.compile(r"^C (\d+) (\d+)$", re.MULTILINE)
RELAY_START = re.compile(r"session relay start .*\bresume=new\b.*$", re.MULTILINE)


class CounterSession:
    """``tsh ssh`` running a loop that prints ``C <shell pid> <n>`` every 0.1 s until
    ``stop`` exists; its stdout is read by a thread."""

    def __init__(self, fleet: Fleet, hub: str, node: str, stop: Path, err: Path) -> None:
        loop = f'i=0; while [ ! -e {stop} ]; do echo "C $$ $i"; i=$((i+1)); sleep 0.1; done'
        self.stop_file = stop
        self.err = err
        with open(err, "wb") as stderr:
            self.proc = subprocess.Popen(
                [
                    str(BIN / "tsh"),
                    *("-i", str(fleet.ident), "--proxy", hub),
                    *("ssh", f"{ME}@{node}", loop),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                env=fleet.cluster.env(),
            )
        self.out = bytearray()
        self.lock = threading.Lock()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        while chunk := self.proc.stdout.read1(65536):
            with self.lock:
                self.out += chunk

    def counters(self) -> list[tuple[int, int]]:
        with self.lock:
            text = self.out.decode(errors="replace")
        return [(int(pid), int(n)) for pid, n in COUNTER.findall(text)]

    def last(self) -> int:
        seen = self.counters()
        return seen[-1][1] if seen else -1

    def advancing(self, what: str, timeout: float = 30.0) -> None:
        start = self.last()
        wait_for(lambda: self.last() >= start + 10, timeout=timeout, interval=0.1, what=what)

    def finish(self) -> int:
        """End the loop (the session then ends as any); tsh's exit status."""
        self.stop_file.touch()
        try:
            return self.proc.wait(timeout=30)
        finally:
            stop_process(self.proc, signal.SIGKILL)
            self.reader.join(timeout=10)


def _relay_line(cluster: HubCluster, before: dict[int, int]) -> tuple[int, str]:
    """The hub whose log shows the new resumable session's relay start (since
    ``before``: each log's size then), and that line."""
    found = []
    for member in cluster.members:
        text = (cluster.root / f"{member.id}.log").read_bytes()[before[member.index] :]
        found += [(member.index, m) for m in RELAY_START.findall(text.decode(errors="replace"))]
    assert len(found) <= 1, found
    return found[0] if found else (-1, "")


def _log_sizes(cluster: HubCluster) -> dict[int, int]:
    return {m.index: (cluster.root / f"{m.id}.log").stat().st_size for m in cluster.members}


@pytest.mark.timeout(180)
@pytest.mark.parametrize("victim", ["user", "tunnel"])
def test_kill9_the_hub_relaying_a_session_resumes_it_through_another(
    fleet: Fleet, tmp_path: Path, victim: str
) -> None:
    """``user``: tsh dials the load balancer and the hub it reached dies; ``tunnel``: tsh
    dials a hub that does not hold the node, and the hub that relayed for it (holding
    the agent's tunnel that carried the session) dies. Either way the same shell
    carries on, every number once."""
    cluster = fleet.cluster
    held = cluster.holders()
    if victim == "user":
        hub, node = fleet.lb.addr, "dev1"
    else:
        member, node = next((m, n) for m in cluster.members for n in NODES if m.id not in held[n])
        hub = member.addr
    before = _log_sizes(cluster)
    session = CounterSession(fleet, hub, node, tmp_path / "stop", tmp_path / "err")
    try:
        session.advancing("the counter to start")
        user_hub, line = wait_for(
            lambda: (found := _relay_line(cluster, before))[0] >= 0 and found,
            what="the session's relay start in a hub log",
        )
        via = re.search(r"\bvia=(hub-\d+)", line)
        if victim == "user":
            killed = user_hub
        else:
            assert via is not None, line  # relayed through the hub holding the tunnel
            killed = int(via.group(1).removeprefix("hub-"))
        cluster.kill(killed)
        session.advancing(f"the counter after hub-{killed} was killed")
        _restore(fleet)
        session.advancing("the counter with three hubs again")
        code = session.finish()
    finally:
        stop_process(session.proc, signal.SIGKILL)
        _restore(fleet)
    err = session.err.read_text()
    assert code == 0, err
    assert f"resumed the session to {node}" in err, err
    seen = session.counters()
    assert len({pid for pid, _ in seen}) == 1, f"the shell changed: {sorted({p for p, _ in seen})}"
    numbers = [n for _, n in seen]
    assert numbers == list(range(len(numbers))), "a gap or a duplicate: " + str(
        [(a, b) for a, b in itertools.pairwise(numbers) if b != a + 1][:5]
    )


def _stored(fleet: Fleet, node_id: str) -> tuple[int, int]:
    row = fleet.pg.psql(
        "SELECT count(*), count(DISTINCT id) FROM events"
        f" WHERE node = '{node_id}' AND type = 'exec' AND username = 'seed'",
        fleet.db,
    ).strip()
    total, distinct = row.split("|")
    return int(total), int(distinct)


def _in_outbox(path: Path, last_seq: int) -> int:
    """Events up to ``last_seq`` still in the agent's outbox (not yet acked)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return int(
            db.execute("SELECT count(*) FROM events WHERE seq <= ?", (last_seq,)).fetchone()[0]
        )
    finally:
        db.close()


@pytest.mark.timeout(600)
def test_audit_backlog_drained_while_hubs_die_arrives_exactly_once(fleet: Fleet) -> None:
    cluster = fleet.cluster
    n = 5000
    name = "audit-dev"
    _agent(cluster, name, fleet.lb.addr)
    wait_for(lambda: _fully_held(cluster, (name,)), timeout=60, what=f"{name} on two hubs")
    node_id = next(n["id"] for n in cluster.tctl_json("nodes", "ls") if n["name"] == name)
    agent = cluster.agents.pop(name)
    os.kill(agent.pid, signal.SIGTERM)
    assert agent.wait(timeout=20) == 0
    outbox = cluster.root / f"agent-{name}" / "audit.db"
    seeded = seed_outbox(outbox, node_id, n, 1000)
    assert len(seeded) == n
    cluster.agents[name] = agent = cluster.start_agent(name)
    for victim in (0, 1, 2, 0):
        wait_for(lambda: _stored(fleet, node_id)[0] > 0, timeout=60, what="drain under way")
        cluster.kill(victim)
        time.sleep(1.5)
        cluster.start_hub(index=victim)
    wait_for(lambda: _stored(fleet, node_id)[0] >= n, timeout=120, interval=0.5, what="all in")
    # A duplicate would come from a batch sent again: none can be once every seeded
    # event is acked (gone from the outbox), and each ack follows its batch's insert.
    last = max(seeded.values())
    wait_for(lambda: _in_outbox(outbox, last) == 0, timeout=60, interval=0.1, what="all acked")
    total, distinct = _stored(fleet, node_id)
    assert (total, distinct) == (n, n), f"stored {total} rows, {distinct} ids, of {n}"
    assert agent.poll() is None
    _restore(fleet)


@pytest.mark.timeout(300)
def test_rollout_across_three_hubs_survives_a_kill_and_installs_once(fleet: Fleet) -> None:
    cluster = fleet.cluster
    bundle = signed_bundle(cluster.root, cluster.root / "fw.key", "2.0.0", HOOK, 200 * 1024)
    out = cluster.tctl_json(
        "firmware", "push", str(bundle), "--nodes", "board=rpi4", "--rate", "100KiB/s"
    )
    rollout = out["id"]
    assert sorted(out["nodes"]) == sorted(NODES)
    time.sleep(1.0)
    cluster.kill(1)
    status: dict[str, Any] = wait_for(
        lambda: (s := cluster.tctl_json("firmware", "status", rollout))["state"] == "done" and s,
        timeout=120,
        interval=0.5,
        what="roll-out done",
    )
    states = {n["node"]: n["state"] for n in status["nodes"]}
    assert set(states.values()) == {"installed"}, states
    for name in NODES:
        installs = (cluster.root / f"agent-{name}" / "installs").read_text().split()
        assert installs == ["2.0.0"], (name, installs)
    _restore(fleet)


@pytest.mark.timeout(300)
def test_host_ca_rotation_driven_from_one_hub_reaches_agents_on_every_hub(
    fleet: Fleet,
) -> None:
    cluster = fleet.cluster
    nodes = len(cluster.tctl_json("nodes", "ls"))
    cluster.tctl_hub = 2
    for phase in ("init", "update_clients", "update_servers", "standby"):
        cluster.tctl("auth", "rotate", "--type", "host", "--manual", "--phase", phase)
        wait_for(
            lambda: cluster.tctl_json("status")["nodes_updated"] == nodes,
            timeout=60,
            interval=0.5,
            what=f"every agent on every hub to take {phase}",
        )
    cluster.tctl_hub = 0
    ident = cluster.sign("alice", cluster.root / "alice-rotated.identity")
    for member in cluster.members:  # every hub serves and relays with the new CA
        for name in NODES:
            wait_for(
                lambda m=member, n=name: (
                    cluster.ssh(ident, m.addr, f"{ME}@{n}", "true").returncode == 0
                ),
                timeout=30,
                interval=0.5,
                what=f"{name} through {member.id} after the rotation",
            )
