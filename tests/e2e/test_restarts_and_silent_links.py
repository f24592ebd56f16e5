"""Hub restarts and silent links as users see them (docs/tunnels.md, "Hub restarts
and silent links"), on one hub with two agents, one behind a fault proxy:

* a frozen link (open, nothing gets through): ``tsh ssh`` says at once that the
  node is not answering, instead of waiting out the channel-open timeout;
* SIGTERM: open sessions (tsh ssh, and OpenSSH through tsh proxy ssh) are told
  how long they have, new sessions during the drain are told when to come back;
* SIGKILL: ``tctl nodes ls`` does not keep showing the dead hub's tunnels online.
"""

from __future__ import annotations

import os
import pwd
import re
import select
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from faultproxy import FaultProxy
from helpers import BIN, Cluster, free_port, stop_process, wait_for

from remoteler.protocol import TUNNEL_ALPN

ME = pwd.getpwuid(os.geteuid()).pw_name
#: the OpenSSH session's command ends 3 s after it starts, well inside the grace;
#: a new tsh during the drain has the rest (a tsh start is ~2 s on a loaded machine)
GRACE = 6
HUB_FLAGS = ("--shutdown-grace", str(GRACE), "--drain-spread", "1")
HEARTBEAT = 1.5
#: the frozen agent is probed after 3 s of silence, dropped after 15 s: room for a
#: slow tsh start-up on a loaded machine before the node would just be "offline"
MISSES = 10


@dataclass
class Rig:
    cluster: Cluster
    proxy: FaultProxy
    #: ``tsh config``'s OpenSSH block (ProxyCommand ``tsh proxy ssh``)
    ssh_config: Path
    #: d1 as OpenSSH names it: ``d1.<cluster>``
    ssh_host: str


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    assert shutil.which("ssh"), "needs OpenSSH's ssh client: apt-get install openssh-client"
    cluster = Cluster(tmp_path_factory.mktemp("restarts"), free_port())
    cluster.start_hub(*HUB_FLAGS)
    proxy = FaultProxy("127.0.0.1", cluster.hub_port).start()
    try:
        cluster.add_user("alice", [ME])
        # sessions that end at a drain, as without resumption (docs/resume.md)
        cluster.start_agent("d1", "env=lab", None, "--resume-grace", "0")
        cluster.start_agent(
            "truck-042",
            "env=lab",
            None,
            "--heartbeat-interval",
            f"{HEARTBEAT:g}",
            "--allowed-misses",
            str(MISSES),
            hub=proxy.addr,
        )
        login = cluster.login("alice")
        assert login.returncode == 0, login.stderr
        config = cluster.tsh("config")
        assert config.returncode == 0, config.stderr
        ssh_config = cluster.root / "ssh_config"
        ssh_config.write_text(config.stdout)
        suffix = re.search(r"^Host \*\.(\S+)$", config.stdout, re.M)
        assert suffix is not None, config.stdout
        yield Rig(cluster, proxy, ssh_config, f"d1.{suffix.group(1)}")
    finally:
        proxy.stop()
        cluster.stop()


def _hub_running(cluster: Cluster, *nodes: str) -> None:
    if cluster.hub is not None and cluster.hub.poll() is not None:
        cluster.hub = None  # it exited (a drain that a failed test did not wait for)
    if cluster.hub is None:
        cluster.start_hub(*HUB_FLAGS)
    wait_for(
        lambda: {n["name"] for n in cluster.tctl_json("nodes", "ls") if n["online"]} >= set(nodes),
        timeout=30,
        interval=0.3,
        what=f"{nodes} online",
    )


def test_frozen_link_is_reported_within_the_probe_deadline(rig: Rig) -> None:
    cluster = rig.cluster
    _hub_running(cluster, "d1", "truck-042")
    try:
        rig.proxy.blackhole(True)  # the link stays open; nothing crosses it any more
        frozen = time.monotonic()
        time.sleep(2 * HEARTBEAT + 0.5)
        asked = time.monotonic()
        run = cluster.tsh("ssh", f"{ME}@truck-042", "echo never", timeout=30)
        took = time.monotonic() - asked
    finally:
        # Out of the way of the restarts below: the hub sees its connection close.
        stop_process(cluster.agents.pop("truck-042"), signal.SIGKILL)
        rig.proxy.stop()
    assert run.returncode == 255, run.stderr
    said = re.fullmatch(
        r"tsh: truck-042 is not answering \(link silent for (\d+) s\); "
        r"it will be marked offline at (\d\d:\d\d:\d\d \S+); try again once it reconnects\n",
        run.stderr,
    )
    assert said is not None, run.stderr
    # Silent since the last heartbeat before the freeze (up to one interval, later
    # under load), shown rounded: at most one interval and a second over the freeze.
    assert 2 * HEARTBEAT <= int(said.group(1)) <= time.monotonic() - frozen + HEARTBEAT + 1
    # The 2 s probe plus tsh's own start-up, on a loaded machine; before: ~11 s, the
    # rest of the 15 s heartbeat deadline, and then "did not accept the session".
    assert took < 9, took
    print(f"frozen link: tsh answered in {took:.1f} s")


def _tunnel_handshake_refused(cluster: Cluster) -> bool:
    """True if the hub closes a connection offering the agents' ALPN before TLS."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols([TUNNEL_ALPN])
    try:
        with (
            socket.create_connection(("127.0.0.1", cluster.hub_port), timeout=10) as raw,
            ctx.wrap_socket(raw, server_hostname="remoteler-hub"),
        ):
            return False
    except (ssl.SSLError, ConnectionError):
        return True


def _first_line(proc: subprocess.Popen[str], timeout: float) -> str:
    """The first line of ``proc``'s stdout, read from the pipe a byte at a time so
    that ``communicate()`` later gets all the rest."""
    assert proc.stdout is not None
    fd, line, deadline = proc.stdout.fileno(), b"", time.monotonic() + timeout
    while not line.endswith(b"\n"):
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, f"no line from {proc.args!r} in {timeout} s (so far {line!r})"
        byte = os.read(fd, 1)
        if not byte:
            break
        line += byte
    return line.decode()


def test_drain_tells_open_and_new_sessions_when(rig: Rig) -> None:
    cluster = rig.cluster
    _hub_running(cluster, "d1")
    log = cluster.root / "hub.log"
    # The tsh session outlasts the grace and is cut; OpenSSH's ends before it.
    session, openssh = (
        subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cluster.env(),
        )
        for argv in (
            [str(BIN / "tsh"), "ssh", f"{ME}@d1", "echo started; sleep 60"],
            [
                *("ssh", "-F", str(rig.ssh_config), "-oBatchMode=yes"),
                *(f"{ME}@{rig.ssh_host}", "echo started; sleep 3; echo finished"),
            ],
        )
    )
    try:
        # Both commands running on d1: the OpenSSH one has 3 s to go, whatever its
        # handshake took under load.
        assert [_first_line(p, 30) for p in (session, openssh)] == ["started\n"] * 2
        assert cluster.hub is not None
        hub = cluster.hub
        hub.send_signal(signal.SIGTERM)
        wait_for(lambda: "draining" in log.read_text(), what="the drain to start")
        refused = cluster.tsh("ssh", f"{ME}@d1", "echo new", timeout=30)
        agent_refused = _tunnel_handshake_refused(cluster)
        out, err = session.communicate(timeout=30)
        ssh_out, ssh_err = openssh.communicate(timeout=30)
    finally:
        stop_process(session)
        stop_process(openssh)
    # The new session: a clear line instead of "cannot reach the hub".
    assert refused.returncode == 255, refused.stderr
    again = re.fullmatch(r"tsh: hub is restarting, try again in (\d+) s\n", refused.stderr)
    assert again is not None, refused.stderr
    assert 1 <= int(again.group(1)) <= GRACE
    # An agent's dial is closed before TLS, as a closed port did (no handshake spent).
    assert agent_refused, "the draining hub completed a TLS handshake for an agent"
    # Open sessions: one notice line with the time left; one that ends in time ends
    # normally (OpenSSH through 'tsh proxy ssh': the ProxyCommand's stderr).
    notice = re.search(
        r"^tsh: hub restarting: this session ends in (\d+) s; reconnect with the same command$",
        err,
        re.M,
    )
    assert notice is not None, err
    assert GRACE - 2 <= int(notice.group(1)) <= GRACE
    assert (openssh.returncode, ssh_out) == (0, "finished\n"), ssh_err  # after "started"
    assert notice.group(0) in ssh_err.splitlines(), ssh_err
    # One still open when the grace is over hears that it ends now, then ends (255).
    assert (session.returncode, out) == (255, ""), err  # nothing after "started"
    cut = "tsh: hub restarting: this session ends now; reconnect with the same command"
    lines = err.splitlines()
    assert cut in lines and lines.index(cut) > lines.index(notice.group(0)), err
    assert hub.wait(timeout=30) == 0
    cluster.hub = None


def test_sigkilled_hub_leaves_no_node_online(rig: Rig) -> None:
    """kill -9 leaves the hub's presence leases in storage (docs/storage.md). tctl, a
    client of the hub, says in one line that the hub is gone; the restarted hub drops
    its own leases at start, so a node whose link stays down (van-7's, black-holed)
    is offline at once, not only when the 15 s lease runs out."""
    cluster = rig.cluster
    _hub_running(cluster, "d1")
    proxy = FaultProxy("127.0.0.1", cluster.hub_port).start()  # van-7's own link
    try:
        cluster.start_agent("van-7", "env=lab", hub=proxy.addr)
        wait_for(lambda: cluster.node_online("van-7"), timeout=60, what="van-7 online")
        proxy.blackhole()
        cluster.kill_hub(signal.SIGKILL)  # no clean-up: the leases still say online
        ls = cluster.tctl("nodes", "ls", check=False)
        assert ls.returncode != 0 and len(ls.stderr.splitlines()) == 1, ls.stderr
        assert "hub start --data-dir" in ls.stderr, ls.stderr
        cluster.start_hub(*HUB_FLAGS)
        nodes = {n["name"]: n["online"] for n in cluster.tctl_json("nodes", "ls")}
        assert nodes["van-7"] is False, nodes
    finally:
        stop_process(cluster.agents.pop("van-7"), signal.SIGKILL)
        proxy.stop()
