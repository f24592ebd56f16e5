"""The device identity on disk: token labels are kept, and they win on the device too."""

from __future__ import annotations

import json
from pathlib import Path

from edge_agent.agent import EdgeAgent
from edge_agent.identity import NodeIdentity
from remoteler.ca import CertAuthority, generate_private_key


def identity(token_labels: dict[str, str]) -> NodeIdentity:
    host_ca = CertAuthority.generate("host", "test")
    user_ca = CertAuthority.generate("user", "test")
    key = generate_private_key()
    return NodeIdentity(
        key=key,
        node_id="00000000-0000-4000-8000-000000000001",
        name="truck-042",
        hub="127.0.0.1:3080",
        ssh_cert=host_ca.sign_ssh_host_cert(key.public_key(), key_id="n", principals=["truck-042"]),
        tls_cert=host_ca.issue_x509(
            key.public_key(),
            common_name="n",
            organization="remoteler-node",
            usage="client",
            ttl_seconds=3600,
        ),
        host_ca_pem=host_ca.x509_pem,
        user_ca_ssh=user_ca.ssh_public_line(),
        cluster="test",
        token_labels=token_labels,
    )


def test_token_labels_survive_a_restart(tmp_path: Path) -> None:
    identity({"tier": "safety"}).save(tmp_path)
    assert NodeIdentity.load(tmp_path).token_labels == {"tier": "safety"}


def test_identity_from_before_token_labels_loads_with_none(tmp_path: Path) -> None:
    identity({"tier": "safety"}).save(tmp_path)
    meta_path = tmp_path / "identity" / "node.json"
    meta = json.loads(meta_path.read_text())
    del meta["token_labels"]
    meta_path.write_text(json.dumps(meta))
    assert NodeIdentity.load(tmp_path).token_labels == {}


def test_token_labels_win_over_command_line_labels() -> None:
    # A deny rule on tier=safety must hold on the device even if --labels says otherwise.
    agent = EdgeAgent(identity({"tier": "safety"}), {"tier": "normal", "env": "lab"})
    assert agent.labels == {"tier": "safety", "env": "lab"}


def test_heartbeat_advertises_resume_only_where_it_is_served() -> None:
    """``caps`` says ``resume`` when on_channel resumes: a grace above 0, embedded SSH or
    forward mode (which keeps its TCP connection to sshd across a break)."""
    agent = EdgeAgent(identity({}), {})
    assert agent.heartbeat_payload()["caps"] == ["resume"]
    agent.resume.grace = 0  # --resume-grace 0
    assert agent.heartbeat_payload()["caps"] == []
    agent.resume.grace = 300
    agent.ssh_target = ("127.0.0.1", 22)  # forward mode: the device's own sshd
    assert agent.heartbeat_payload()["caps"] == ["resume"]
