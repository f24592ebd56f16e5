"""The join token never on the agent's command line: ``--token-file``, the config file's
``token-file`` and ``$REMOTELER_JOIN_TOKEN`` join; ``--token`` still joins with one
warning line. Real hub, real agents; the running agent's ``/proc/PID/cmdline`` is read.

One hub for the module, one agent per way of passing the token (stopped once joined);
the refusals of bad token files are in tests/edge_agent/test_jointoken.py.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import BIN, Cluster, free_port, wait_for

from edge_agent.jointoken import CMDLINE_WARNING


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path_factory.mktemp("jointoken"), free_port())
    cluster.start_hub()
    try:
        cluster.pin = cluster.ca_pin()  # asked once: each tctl run costs a second
        yield cluster
    finally:
        cluster.stop()


def start(
    cluster: Cluster, name: str, *extra: str, env: dict[str, str] | None = None
) -> subprocess.Popen[Any]:
    """An agent's first start with ``extra`` flags; stderr to ``agent-NAME.log``."""
    log = cluster.root / f"agent-{name}.log"
    cluster.logs.append(log)
    proc = subprocess.Popen(
        [
            str(BIN / "edge-agent"),
            "start",
            "--data-dir",
            str(cluster.root / f"agent-{name}"),
            "--name",
            name,
            "--reconnect-max",
            "1",
            "--hub",
            cluster.addr,
            "--ca-pin",
            cluster.pin,
            *extra,
        ],
        stdout=open(log, "ab"),  # noqa: SIM115 - the child keeps it
        stderr=subprocess.STDOUT,
        env=cluster.env(**(env or {})),
    )
    cluster.agents[name] = proc
    return proc


def token_file(cluster: Cluster, name: str, token: str, mode: int = 0o600) -> Path:
    path = cluster.root / f"{name}.token"
    path.write_text(token + "\n")
    path.chmod(mode)
    return path


@dataclass
class Agent:
    proc: subprocess.Popen[Any]
    token: str
    token_file: Path | None = None
    log: Path = Path()  # set once all are started

    def cmdline(self) -> bytes:
        return Path(f"/proc/{self.proc.pid}/cmdline").read_bytes()


@pytest.fixture(scope="module")
def agents(cluster: Cluster) -> dict[str, Agent]:
    """One agent per way of passing the token, started together, all joined."""
    out: dict[str, Agent] = {}
    token = cluster.token()
    path = token_file(cluster, "by-file", token)
    out["by-file"] = Agent(start(cluster, "by-file", "--token-file", str(path)), token, path)
    token = cluster.token()
    out["by-env"] = Agent(start(cluster, "by-env", env={"REMOTELER_JOIN_TOKEN": token}), token)
    token = cluster.token()
    path = token_file(cluster, "by-config", token, mode=0o644)
    conf = cluster.root / "by-config.toml"
    conf.write_text(f'token-file = "{path}"\n')
    out["by-config"] = Agent(start(cluster, "by-config", "--config", str(conf)), token, path)
    token = cluster.token()
    out["by-flag"] = Agent(start(cluster, "by-flag", "--token", token), token)
    for name, agent in out.items():
        agent.log = cluster.root / f"agent-{name}.log"

    def all_online() -> bool:
        online = {n["name"] for n in cluster.tctl_json("nodes", "ls") if n["online"]}
        return online >= out.keys()

    wait_for(all_online, what="the four agents online")
    return out


@pytest.mark.parametrize("name", ["by-file", "by-env", "by-config"])
def test_joined_and_the_token_is_not_in_ps(agents: dict[str, Agent], name: str) -> None:
    agent = agents[name]
    cmdline = agent.cmdline()
    assert b"edge-agent" in cmdline
    assert agent.token.encode() not in cmdline
    assert agent.token not in agent.log.read_text()


@pytest.mark.parametrize("name", ["by-file", "by-env"])
def test_no_warning_for_a_safe_token(agents: dict[str, Agent], name: str) -> None:
    log = agents[name].log.read_text()
    assert "warning" not in log, log


def test_a_readable_token_file_joins_with_a_warning(agents: dict[str, Agent]) -> None:
    agent = agents["by-config"]
    log = agent.log.read_text()
    assert f"token file {agent.token_file} is readable by other users (mode 0644)" in log, log


def test_token_on_the_command_line_joins_with_one_warning(agents: dict[str, Agent]) -> None:
    agent = agents["by-flag"]
    log = agent.log.read_text()
    assert log.count(CMDLINE_WARNING) == 1, log
    assert CMDLINE_WARNING.startswith("edge-agent: warning: --token is visible")
    assert agent.token.encode() in agent.cmdline()  # what the warning is about


def test_tctl_tokens_add_prints_the_safe_form(cluster: Cluster) -> None:
    out = cluster.tctl("tokens", "add", "--type", "node").stdout
    command = next(line.strip() for line in out.splitlines() if "edge-agent start" in line)
    token = out.splitlines()[0].rsplit(" ", 1)[1]
    assert command.startswith(f"REMOTELER_JOIN_TOKEN={token} edge-agent start --hub "), out
    assert "--token" not in command, out
