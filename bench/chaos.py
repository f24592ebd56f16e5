"""Dead-tunnel detection: the agent's link black-holed by the fault proxy, then restored.

The agent dials the hub through :class:`faultproxy.FaultProxy` with short heartbeats
(2 s x 3 allowed misses; 0.5 s x 2 in smoke mode). Each round cuts the link without
closing anything (a NAT that forgot the mapping), and measures:

* how long the agent takes to declare the tunnel dead (its log line), against the
  configured bound ``interval x misses``;
* how long the hub takes to drop the node from its live registry (``tsh ls``);
* once both ends gave up on the link (and no sooner than twice the bound), the
  link returns: how long until the agent's tunnel is up again.
"""

from __future__ import annotations

import json
import os
import pwd
import sys
import time
from pathlib import Path

from bench.harness import Context, Figure, benchmark, median, p99

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from faultproxy import FaultProxy
from helpers import Cluster, free_port, wait_for

LOGIN = pwd.getpwuid(os.geteuid()).pw_name
NODE = "chaos-node"
#: Longest wait for the hub to notice, past the bound (it also waits out a websocket
#: closing handshake, 10 s, on the dead link).
HUB_WAIT = 15.0
#: A reconnect attempt that began inside the outage waits for open_ws's 15 s timeout.
CONNECT_TIMEOUT = 15.0


def _count(log: Path, needle: str) -> int:
    return log.read_text(errors="replace").count(needle)


def _hub_online(cluster: Cluster) -> bool:
    ls = cluster.tsh("ls", "--format", "json", timeout=30)
    return ls.returncode == 0 and any(n["online"] for n in json.loads(ls.stdout))


@benchmark("dead_tunnel")
def dead_tunnel(ctx: Context) -> list[Figure]:
    interval, misses, reconnect_max = ctx.pick((2.0, 3, 2.0), (0.5, 2, 1.0))
    bound = interval * misses
    print(
        f"dead_tunnel: heartbeat {interval:g} s x {misses} misses: dead within {bound:g} s",
        file=sys.stderr,
    )
    cluster = Cluster(ctx.workdir / "cluster", free_port())
    cluster.root.mkdir(parents=True, exist_ok=True)
    log = cluster.root / f"agent-{NODE}.log"
    agent_s: list[float] = []
    hub_s: list[float] = []
    back_s: list[float] = []
    outage_s: list[float] = []
    cluster.start_hub()
    proxy = FaultProxy("127.0.0.1", cluster.hub_port).start()
    try:
        if not ctx.smoke:  # tsh ls shows the hub's live view; smoke skips the login
            cluster.add_user("bench", [LOGIN])
        cluster.start_agent(
            NODE,
            "",
            None,
            "--heartbeat-interval",
            f"{interval:g}",
            "--allowed-misses",
            str(misses),
            "--reconnect-max",
            f"{reconnect_max:g}",
            hub=proxy.addr,
        )
        wait_for(lambda: _count(log, "tunnel up") >= 1, what="agent tunnel up")
        if not ctx.smoke:
            login = cluster.login("bench")
            if login.returncode != 0:
                raise RuntimeError(f"bench login failed: {login.stderr}")
        for _ in range(ctx.repeats):
            time.sleep(interval)  # a heartbeat or two on the fresh tunnel
            dead, ups = _count(log, "HEARTBEAT_TIMEOUT"), _count(log, "tunnel up")
            proxy.blackhole(True)
            cut = time.monotonic()
            wait_for(lambda: _count(log, "HEARTBEAT_TIMEOUT") > dead, timeout=bound + 30)  # noqa: B023
            agent_s.append(time.monotonic() - cut)
            if not ctx.smoke:
                wait_for(lambda: not _hub_online(cluster), timeout=bound + HUB_WAIT + 30)
                hub_s.append(time.monotonic() - cut)
            # the link returns once both ends gave up on it, and not before 2 x bound
            # (smoke: 1 x, and it cuts a redial begun inside the outage, which would
            # otherwise wait out the agent's 5 s dial timeout)
            time.sleep(max(0.0, cut + ctx.pick(2, 1) * bound - time.monotonic()))
            proxy.blackhole(False)
            if ctx.smoke:
                proxy.reset()
            restored = time.monotonic()
            outage_s.append(restored - cut)
            wait_for(
                lambda: _count(log, "tunnel up") > ups,  # noqa: B023
                timeout=CONNECT_TIMEOUT + HUB_WAIT + reconnect_max + 30,
                interval=0.05,
            )
            back_s.append(time.monotonic() - restored)
    finally:
        proxy.stop()
        cluster.stop()
    setting = f"{interval:g} s x {misses}"
    full = not ctx.smoke
    figures = [
        Figure(
            "dead_tunnel",
            "agent detects dead tunnel",
            "s",
            median(agent_s),
            p99(agent_s),
            samples=agent_s,
            goal=f"<= {bound:g} s ({setting})",
            met=median(agent_s) <= bound + 0.5 if full else None,
        ),
        Figure(
            "dead_tunnel",
            "back after the link returns",
            "s",
            median(back_s),
            p99(back_s),
            samples=back_s,
            goal=f"<= {CONNECT_TIMEOUT + reconnect_max:g} s (connect timeout + backoff cap)",
            met=median(back_s) <= CONNECT_TIMEOUT + reconnect_max if full else None,
            note=f"outage of {median(outage_s):.1f} s (median): both ends saw it, >= 2 x bound",
        ),
    ]
    if hub_s:
        figures.insert(
            1,
            Figure(
                "dead_tunnel",
                "hub drops node (tsh ls)",
                "s",
                median(hub_s),
                p99(hub_s),
                samples=hub_s,
                goal=f"<= {bound:g} s ({setting})",
                met=median(hub_s) <= bound + 1.0,
            ),
        )
    return figures
