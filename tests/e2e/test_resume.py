"""Resumable sessions (docs/resume.md), end to end with real processes.

One hub, one agent dialling it through a fault proxy, and ``tsh`` dialling it
through another: an interactive shell under a real pty keeps printing a counter
while the agent's link is black-holed, reset, and the hub itself is killed and
restarted; the user's screen shows every number once, from the same shell.
"""

from __future__ import annotations

import itertools
import os
import pty
import pwd
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from faultproxy import FaultProxy
from helpers import BIN, PASSWORD, Cluster, current_totp, free_port, wait_for

ME = pwd.getpwuid(os.geteuid()).pw_name
COUNTER = re.compile(rb"C (\d+) (\d+)\r?\n")
LOOP = b'i=0; while :; do echo "C $$ $i"; i=$((i+1)); sleep 0.1; done\n'


class Screen:
    """What a user's terminal shows: tsh under a pty, read by a thread."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(
            argv, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True
        )
        os.close(slave)
        self.data = bytearray()
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:
                return
            if not chunk:
                return
            with self.lock:
                self.data += chunk

    def text(self) -> bytes:
        with self.lock:
            return bytes(self.data)

    def type(self, data: bytes) -> None:
        os.write(self.master, data)

    def counters(self) -> list[tuple[int, int]]:
        return [(int(p), int(n)) for p, n in COUNTER.findall(self.text())]

    def last(self) -> int:
        seen = self.counters()
        return seen[-1][1] if seen else -1

    def advancing(self, what: str, timeout: float = 60.0) -> None:
        start = self.last()
        wait_for(lambda: self.last() >= start + 10, timeout=timeout, what=what)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        os.close(self.master)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[tuple[Cluster, FaultProxy, FaultProxy]]:
    cluster = Cluster(tmp_path, free_port())
    cluster.start_hub()
    with (
        FaultProxy("127.0.0.1", cluster.hub_port) as agent_link,
        FaultProxy("127.0.0.1", cluster.hub_port) as user_link,
    ):
        try:
            cluster.add_user("alice", [ME])
            cluster.start_agent(
                "truck-042",
                "env=lab",
                None,
                "--heartbeat-interval",
                "2",
                hub=agent_link.addr,
            )
            wait_for(lambda: cluster.node_online("truck-042"), what="agent online")
            login = cluster.tsh(
                "login",
                "--proxy",
                user_link.addr,
                "--user",
                "alice",
                "--ca-pin",
                cluster.ca_pin(),
                "--otp",
                current_totp(),
                input=PASSWORD + "\n",
            )
            assert login.returncode == 0, login.stderr
            yield cluster, agent_link, user_link
        finally:
            cluster.stop()


def _check_continuous(seen: list[tuple[int, int]]) -> None:
    pids = {pid for pid, _ in seen}
    assert len(pids) == 1, f"the shell changed: pids {sorted(pids)}"
    numbers = [n for _, n in seen]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), (
        "a gap or a duplicate: "
        + str([(a, b) for a, b in itertools.pairwise(numbers) if b != a + 1][:5])
    )


@pytest.mark.timeout(240)
def test_counter_survives_blackhole_reset_and_hub_restart(
    rig: tuple[Cluster, FaultProxy, FaultProxy],
) -> None:
    cluster, agent_link, user_link = rig
    screen = Screen([str(BIN / "tsh"), "ssh", f"{ME}@truck-042"], cluster.env(TERM="dumb"))
    try:
        wait_for(lambda: screen.text().rstrip().endswith((b"#", b"$")), what="a prompt")
        screen.type(LOOP)
        screen.advancing("the counter to start", timeout=30)

        agent_link.blackhole()  # the truck drives into a tunnel
        time.sleep(30)
        agent_link.clear()
        screen.advancing("the counter after a 30 s black hole")

        agent_link.reset()  # the modem resets: RST both ways
        screen.advancing("the counter after the agent's link was reset")

        user_link.reset()  # the technician's own link drops
        screen.advancing("the counter after the user's link was reset")

        cluster.kill_hub()  # the hub dies; the agent and tsh both dial a new one
        cluster.start_hub()
        screen.advancing("the counter after the hub restarted")

        screen.type(b"\x03")  # ^C the loop
        screen.type(b"exit 7\n")
        assert screen.proc.wait(30) == 7
    finally:
        screen.stop()
    text = screen.text()
    assert b"resumed the session to truck-042" in text, text[-2000:]
    _check_continuous(screen.counters())
