"""The agent imports only what it uses: no hub or tsh code, no hub-only dependency.

Checked on a real agent process up to its first tunnel (``-X importtime`` lists
every module it imported), and on the import graph of the start-up modules.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from helpers import BIN, Cluster, stop_process, wait_for

#: packages an agent must never load: the hub's and tsh's code, the hub's extra deps
FORBIDDEN = ("hub", "tsh", "argon2", "_argon2_cffi_bindings", "pyotp")


def forbidden(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in FORBIDDEN)


def test_the_start_up_import_graph_has_no_hub_or_tsh_code() -> None:
    code = (
        "import json, sys\n"
        "from edge_agent.cli import build_parser\n"
        "build_parser().parse_args(['start'])\n"
        "import edge_agent.agent, edge_agent.config, edge_agent.health, edge_agent.identity\n"
        "import edge_agent.join, edge_agent.local, edge_agent.locks, edge_agent.outbox\n"
        "import edge_agent.rotate, remoteler.addr, remoteler.wire.limits\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    modules = set(json.loads(out.stdout))
    assert {"edge_agent.agent", "edge_agent.outbox"} <= modules  # the check sees imports
    assert forbidden(modules) == []


def test_a_running_agent_never_imported_hub_or_tsh_code(cluster: Cluster, tmp_path: Path) -> None:
    data = tmp_path / "agent"
    errors = tmp_path / "importtime.txt"
    env = cluster.env(PYTHONPROFILEIMPORTTIME="1")
    with open(errors, "wb") as err:
        proc = subprocess.Popen(
            [
                str(BIN / "edge-agent"), "start", "--data-dir", str(data), "--name", "slim",
                "--hub", cluster.addr, "--token", cluster.token(), "--ca-pin", cluster.ca_pin(),
            ],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=env,
        )  # fmt: skip
    cluster.agents["slim"] = proc
    wait_for(lambda: cluster.node_online("slim"), what="agent online")
    stop_process(proc)
    modules = set(re.findall(r"^import time:.*\|\s+([\w.]+)\s*$", errors.read_text(), re.M))
    assert {"edge_agent.agent", "websockets", "cryptography"} <= modules  # it did start
    assert forbidden(modules) == []
    # asyncssh (~7 MiB of RSS) comes with the first SSH session, not before: the
    # agent_footprint bench goal (< 45 MiB idle) depends on it
    assert "asyncssh" not in modules, "an idle agent imported asyncssh"
