"""Audit through real processes: recordings that replay what the user saw, quotas."""

from __future__ import annotations

import json
import os
import pwd
import signal
import subprocess
from pathlib import Path

from helpers import Cluster, free_port, wait_for

ME = pwd.getpwuid(os.geteuid()).pw_name


def _session_events(cluster: Cluster, session_id: str, want: str) -> list[dict[str, object]]:
    def ready() -> list[dict[str, object]] | None:
        events = cluster.tctl_json("audit", "search", "--session", session_id)
        return events if any(e["type"] == want for e in events) else None

    return list(wait_for(ready, timeout=30, what=f"{want} of {session_id} at the hub"))


def test_recording_replays_exactly_what_the_user_saw(cluster: Cluster) -> None:
    cluster.add_user("rita", [ME])
    cluster.add_user("sam", [ME])
    cluster.start_agent("dev1", "env=lab")
    wait_for(lambda: cluster.node_online("dev1"), what="online")
    assert cluster.login("rita").returncode == 0
    script = (
        "for i in 1 2 3; do echo line $i; sleep 0.3; done; printf 'caf\\xc3\\xa9\\n' >&2; exit 4"
    )
    run = cluster.tsh("ssh", f"{ME}@dev1", script)
    assert run.returncode == 4
    seen = (run.stdout + run.stderr).encode()

    starts = wait_for(
        lambda: [
            e
            for e in cluster.tctl_json(
                "audit", "search", "--type", "session.start", "--user", "rita"
            )
            if e["node"]
        ],
        what="session.start",
    )
    session_id = starts[0]["session"]
    events = _session_events(cluster, session_id, "session.end")
    end = next(e for e in events if e["type"] == "session.end")
    assert end["fields"]["exit_status"] == 4
    assert end["fields"]["bytes_out"] == len(seen)
    exec_event = next(e for e in events if e["type"] == "exec")
    assert exec_event["fields"]["command"] == script and exec_event["fields"]["exit_code"] == 4

    played = cluster.tsh("play", session_id, "--format", "text")
    assert played.returncode == 0, played.stderr
    assert sorted(played.stdout.encode().splitlines()) == sorted(seen.splitlines())
    timed = json.loads(cluster.tsh("play", session_id, "--format", "json").stdout)
    offsets = [f["offset_ms"] for f in timed]
    assert offsets == sorted(offsets) and offsets[-1] >= 600, "the timing is kept"

    # another user may not replay it
    assert cluster.login("sam").returncode == 0
    denied = cluster.tsh("play", session_id)
    assert denied.returncode != 0 and denied.stderr.count("\n") == 1


def _trust_host_ca(cluster: Cluster, ident: Path) -> None:
    """known_hosts beside ``ident``: the host CA, from the running hub."""
    (ident.parent / "known_hosts").write_text(
        cluster.tctl("auth", "export", "--type", "host").stdout
    )


def _openssh(
    cluster: Cluster, ident: Path, port: int, node: str, command: str
) -> subprocess.CompletedProcess[str]:
    """OpenSSH straight to the agent's --local-listen port (no hub), trusting the host CA
    that ``known_hosts`` beside ``ident`` holds (written by :func:`_trust_host_ca`)."""
    known = ident.parent / "known_hosts"
    return subprocess.run(
        [
            "ssh",
            "-F",
            "/dev/null",
            "-i",
            str(ident),
            "-p",
            str(port),
            "-o",
            f"UserKnownHostsFile={known}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"HostKeyAlias={known.read_text().split()[1].replace('*', node, 1)}",
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
            f"{ME}@127.0.0.1",
            command,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def test_refuse_sessions_policy_refuses_with_a_clear_message(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Hub down, technician on site: once the outbox is full, new sessions are refused."""
    cluster.add_user("tom", [ME])
    port = free_port()
    cluster.start_agent(
        "full",
        "",
        None,
        "--audit-quota",
        # room for a few sessions: each needs its start, end and a minimum of
        # recording (192 KiB) under the quota, which counts the WAL too
        "400KiB",
        "--audit-policy",
        "refuse-sessions",
        "--local-listen",
        f"127.0.0.1:{port}",
    )
    wait_for(lambda: cluster.node_online("full"), what="online")
    ident = tmp_path / "tom"
    cluster.tctl("auth", "sign", "--user", "tom", "--ttl", "1h", "-o", str(ident))
    _trust_host_ca(cluster, ident)  # tctl needs the hub: before it stops
    cluster.kill_hub(signal.SIGTERM)  # nothing drains from now on
    results = [_openssh(cluster, ident, port, "full", "echo " + "x" * 500) for _ in range(8)]
    ok = [r for r in results if r.returncode == 0]
    refused = [r for r in results if r.returncode != 0]
    assert ok, "sessions run while there is room"
    assert refused, "the outbox filled up and sessions were refused"
    assert results.index(refused[0]) == len(ok), "once refused, every later session is refused"
    assert "audit outbox full" in refused[0].stderr
    assert refused[0].stderr.strip().count("\n") == 0, refused[0].stderr
