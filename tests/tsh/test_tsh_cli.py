"""``tsh`` as a user meets it: invites with a pin, remembered logins, default login,
refusals that are one line (forwarding, unknown login, hidden node, bad identity)."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import BIN, PASSWORD, Cluster, current_totp, free_port, wait_for

from remoteler.ca import generate_private_key, private_key_to_openssh, write_secret_file
from remoteler.caps import AGENT_CAPS
from remoteler.errors import UsageError

ME = pwd.getpwuid(os.geteuid()).pw_name


def _role(cluster: Cluster, name: str, body: str) -> None:
    path = cluster.root / f"{name}.toml"
    path.write_text(f'kind = "role"\nname = "{name}"\n{body}')
    cluster.tctl("create", "-f", str(path))


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One hub, one agent ("dev1", env=lab); sam logged in (logins ME and 'nosuch')."""
    assert os.geteuid() == 0, "these tests run the agent as root (it switches to each login)"
    cluster = Cluster(tmp_path_factory.mktemp("tshcli"), free_port())
    cluster.start_hub()
    try:
        cluster.start_agent("dev1", "env=lab")  # joins while the users are made
        _role(
            cluster,
            "nofwd",
            '[allow]\nlogins = ["{{internal.logins}}"]\nnode_labels = { "*" = "*" }\n'
            "[permissions]\nport_forwarding = false\n",
        )
        _role(
            cluster,
            "elsewhere",
            '[allow]\nlogins = ["{{internal.logins}}"]\nnode_labels = { env = "other" }\n',
        )
        cluster.add_user("sam", [ME, "nosuch"])
        cluster.add_user("fred", [ME], roles="nofwd")
        cluster.add_user("hugo", [ME], roles="elsewhere")
        wait_for(lambda: cluster.node_online("dev1"), what="dev1 online")
        login = cluster.login("sam")
        assert login.returncode == 0, login.stderr
        yield cluster
    finally:
        cluster.stop()


def _home(node: Cluster, name: str) -> dict[str, str]:
    return node.env(TSH_HOME=str(node.root / f"tsh-{name}"))


def _login_as(node: Cluster, user: str) -> dict[str, str]:
    env = _home(node, user)
    run = node.tsh(
        "login", "--proxy", node.addr, "--user", user, "--ca-pin", node.ca_pin(),
        "--otp", current_totp(), input=PASSWORD + "\n", env=env,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    return env


def _one_line(run: subprocess.CompletedProcess[str]) -> str:
    assert run.stderr.startswith("tsh: ") and run.stderr.count("\n") == 1, run.stderr
    assert "Traceback" not in run.stderr
    return run.stderr


# -- B7: the invite carries the CA pin --------------------------------------------------


def test_invite_command_carries_the_pin_and_tsh_checks_it(node: Cluster) -> None:
    out = node.tctl("users", "add", "ivy", "--logins", ME).stdout
    command = next(line.split() for line in out.splitlines() if "tsh login" in line)
    pin = command[command.index("--ca-pin") + 1]
    assert pin == node.ca_pin()
    env = _home(node, "ivy")

    wrong = node.tsh(*command[1:-1], "sha256:" + "0" * 64, input=PASSWORD + "\n", env=env)
    assert wrong.returncode != 0 and "CA pin mismatch" in _one_line(wrong)
    garbage = node.tsh(*command[1:-1], "sha256:nope", input="", env=env)
    assert garbage.returncode == 2 and "--ca-pin" in _one_line(garbage)

    # The printed command, as is: the pin vouches for the hub, no trust on first use.
    proc = subprocess.Popen(
        [str(BIN / "tsh"), *command[1:]],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stderr is not None and proc.stdin is not None
        said = [proc.stderr.readline() for _ in range(3)]
        secret = said[1].split("secret:")[1].strip()
        stdout, stderr = proc.communicate(f"{PASSWORD}\n{current_totp(secret)}\n", timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    assert "Logged in as ivy" in stdout
    assert "first use" not in "".join(said) + stderr


# -- C3: remembered hub and user, $TSH_PROXY / $TSH_USER, default login ----------------


def test_login_alone_logs_in_again_and_env_names_hub_and_user(node: Cluster) -> None:
    env = {**_home(node, "fred"), "TSH_PROXY": node.addr, "TSH_USER": "fred"}
    first = node.tsh(
        "login", "--ca-pin", node.ca_pin(), "--otp", current_totp(), input=PASSWORD + "\n", env=env
    )
    assert first.returncode == 0 and "Logged in as fred" in first.stdout, first.stderr
    assert node.tsh("logout", env=env).returncode == 0
    env = {k: v for k, v in env.items() if not k.startswith("TSH_") or k == "TSH_HOME"}
    again = node.tsh("login", "--otp", current_totp(offset_steps=1), input=PASSWORD + "\n", env=env)
    assert again.returncode == 0, again.stderr
    assert f"Logged in as fred to {node.addr}" in again.stdout


def test_ssh_without_login_uses_the_first_login_of_the_certificate(node: Cluster) -> None:
    run = node.tsh("ssh", "dev1", "id -un")
    assert (run.returncode, run.stdout) == (0, f"{ME}\n"), run.stderr


# -- C4: -L refused by a role fails at once, before binding -----------------------------


def test_forward_refused_by_role_fails_before_binding(node: Cluster) -> None:
    env = _home(node, "fred")  # logged in by the test above
    if not Path(env["TSH_HOME"], "profile").exists():
        env = _login_as(node, "fred")
    port = free_port()
    started = time.monotonic()
    run = node.tsh("ssh", "-N", "-L", f"{port}:127.0.0.1:9", f"{ME}@dev1", env=env, timeout=30)
    assert run.returncode == 255
    assert "'nofwd'" in _one_line(run) and "port_forwarding = false" in run.stderr
    assert time.monotonic() - started < 20
    allowed = node.tsh("ssh", f"{ME}@dev1", "echo ok", env=env)  # only forwarding is off
    assert allowed.stdout == "ok\n", allowed.stderr


# -- C5: a key that is not the certificate's ---------------------------------------------


def test_identity_whose_key_does_not_match_is_one_line(node: Cluster, tmp_path: Path) -> None:
    ident = tmp_path / "sam-id"
    node.tctl("auth", "sign", "--user", "sam", "--ttl", "1h", "-o", str(ident))
    write_secret_file(ident, private_key_to_openssh(generate_private_key()))
    for argv in (["ls"], ["ssh", f"{ME}@dev1", "true"]):
        run = node.tsh("-i", str(ident), "--proxy", node.addr, *argv)
        assert run.returncode in (1, 255)
        assert "does not match its certificate" in _one_line(run)
    # the profile's key too
    home = node.root / "tsh-swapped"
    shutil.copytree(node.tsh_home, home)
    key = next(p for p in (home / "keys").rglob("sam"))
    write_secret_file(key, private_key_to_openssh(generate_private_key()))
    run = node.tsh("ls", env=node.env(TSH_HOME=str(home)))
    assert run.returncode == 1 and "does not match" in _one_line(run)


# -- C6: a login the device does not have -------------------------------------------------


def test_login_missing_on_the_device_exits_255_with_one_line(node: Cluster) -> None:
    run = node.tsh("ssh", "nosuch@dev1", "true")
    assert run.returncode == 255
    assert _one_line(run) == "tsh: login 'nosuch' does not exist on dev1\n"
    console = node.tsh("console", "nosuch@dev1")  # the same refusal, no traceback
    assert console.returncode != 0
    assert _one_line(console) == "tsh: login 'nosuch' does not exist on dev1\n"


# -- C7: empty listings, and a node the user may not see ---------------------------------


def test_ls_with_no_match_says_so_on_stderr_only(node: Cluster) -> None:
    run = node.tsh("ls", "env=nowhere")
    assert (run.returncode, run.stdout) == (0, "")
    assert run.stderr.startswith("no nodes match env=nowhere")
    as_json = node.tsh("ls", "env=nowhere", "--format", "json")
    assert json.loads(as_json.stdout) == []


def test_ls_verbose_shows_what_the_agent_supports(node: Cluster) -> None:
    """The real agent advertises its capabilities (remoteler/caps.py) in its heartbeat:
    ``tsh ls -v`` has them in its last column, ``--format json`` as ``caps``."""

    def listed() -> str | None:
        out = node.tsh("ls", "-v").stdout
        return out if "resume" in out else None

    header, *rows = wait_for(listed, what="resume in tsh ls -v").splitlines()
    assert header.split()[-1] == "Caps"
    (dev1,) = [r for r in rows if r.split()[0] == "dev1"]
    assert dev1.split()[-1] == ",".join(AGENT_CAPS)
    (as_json,) = json.loads(node.tsh("ls", "-v", "--format", "json").stdout)
    assert as_json["caps"] == list(AGENT_CAPS)
    assert "Caps" not in node.tsh("ls").stdout  # verbose only


def test_hidden_node_looks_like_a_missing_one(node: Cluster) -> None:
    env = _login_as(node, "hugo")
    listed = node.tsh("ls", "--format", "json", env=env)
    assert json.loads(listed.stdout) == []
    hidden = node.tsh("ssh", f"{ME}@dev1", "true", env=env)
    missing = node.tsh("ssh", f"{ME}@ghost", "true", env=env)
    assert hidden.returncode == missing.returncode == 255
    assert _one_line(hidden).replace("dev1", "X") == _one_line(missing).replace("ghost", "X")
    assert "not found or access denied" in hidden.stderr and "env=lab" not in hidden.stderr


# -- C1: tsh play takes the short id tctl prints --------------------------------------------


def test_play_accepts_the_short_session_id(node: Cluster) -> None:
    run = node.tsh("ssh", f"{ME}@dev1", "echo played-back")
    assert run.returncode == 0, run.stderr

    def session() -> str:
        found = node.tctl_json("audit", "search", "--type", "session.end", "--user", "sam")
        return str(found[-1]["session"]) if found else ""

    full = wait_for(session, what="session.end at the hub")
    short = node.tctl("audit", "search", "--type", "session.end", "--user", "sam", "--limit", "1")
    shown = short.stdout.splitlines()[-1].split()
    assert full[:8] in shown
    played = node.tsh("play", full[:8], "--format", "text")
    assert played.returncode == 0, played.stderr
    assert "played-back" in played.stdout
    hugo = _home(node, "hugo")
    if not Path(hugo["TSH_HOME"], "profile").exists():
        hugo = _login_as(node, "hugo")
    other = node.tsh("play", full[:8], env=hugo)  # not hugo's session
    assert other.returncode != 0 and "no session" in _one_line(other)
    too_short = node.tsh("play", full[:2])
    assert too_short.returncode != 0 and "at least 4 characters" in _one_line(too_short)


def test_login_target_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    from tsh.cli import login_target
    from tsh.profile import Profile

    monkeypatch.delenv("TSH_USER", raising=False)
    monkeypatch.setenv("USER", "osuser")
    current = Profile(hub="h1:1", user="alice", cluster="c", ca_pin="p")
    assert login_target(None, None, current, ("h2:2", "bob")) == ("h1:1", "alice")
    assert login_target(None, None, None, ("h2:2", "bob")) == ("h2:2", "bob")
    assert login_target("h3:3", None, current, ("h2:2", "bob")) == ("h3:3", "osuser")
    assert login_target("h2:2", None, current, ("h2:2", "bob")) == ("h2:2", "bob")
    monkeypatch.setenv("TSH_USER", "carol")
    assert login_target(None, None, current, None) == ("h1:1", "carol")
    assert login_target(None, "dave", current, None) == ("h1:1", "dave")
    with pytest.raises(UsageError, match="give the hub"):
        login_target(None, None, None, None)


def _cert(rules: list[object], permit: bool = True) -> str:
    from remoteler.access import RULES_EXTENSION, encode_rules
    from remoteler.ca import DEFAULT_USER_EXTENSIONS, CertAuthority

    extensions = dict(DEFAULT_USER_EXTENSIONS)
    if not permit:
        extensions.pop("permit-port-forwarding", None)
    extensions[RULES_EXTENSION] = encode_rules(rules)  # type: ignore[arg-type]
    ca = CertAuthority.generate("user", "example")
    key = generate_private_key().public_key()
    return ca.sign_ssh_user_cert(
        key, key_id="alice", principals=["pi"], ttl_seconds=600, extensions=extensions
    )


def test_forward_refusal_decides_as_the_device_from_our_certificate() -> None:
    from remoteler.access import DEFAULT_GRANTS, AccessRule
    from tsh.forward import forward_refusal

    lab = AccessRule("lab", ("pi",), {"env": ("lab",)}, grants=DEFAULT_GRANTS)
    bare = AccessRule("bare", ("pi",), {"env": ("prod",)}, grants=frozenset())
    veto = AccessRule("nofwd", ("pi",), {"*": ("*",)}, vetoes=frozenset({"port_forwarding"}))
    cert = _cert([lab, bare])
    assert forward_refusal(cert, "pi", "dev1", None) is None  # labels unknown: the device says
    assert forward_refusal(cert, "pi", "dev1", {"env": "lab"}) is None
    refused = forward_refusal(cert, "pi", "dev2", {"env": "prod"})
    assert refused is not None and "'dev2'" in refused and "grants port_forwarding" in refused
    assert "'nofwd'" in str(forward_refusal(_cert([lab, veto], permit=False), "pi", "d", None))
    no_ext = forward_refusal(_cert([lab], permit=False), "pi", "d", None)
    assert no_ext == "port forwarding is not permitted by your certificate"
    assert forward_refusal("garbage", "pi", "d", None) is None
