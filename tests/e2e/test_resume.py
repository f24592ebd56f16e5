"""Resumable sessions (docs/resume.md), end to end with real processes.

One hub, one agent dialling it through a fault proxy, and ``tsh`` dialling it
through another: an interactive shell under a real pty keeps printing a counter
while the agent's link is black-holed, reset, and the hub itself is killed and
restarted; the user's screen shows every number once, from the same shell.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import os
import pty
import pwd
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from faultproxy import FaultProxy
from helpers import BIN, PASSWORD, Cluster, current_totp, free_port, stop_process, wait_for
from require import require_binaries
from sshdkit import legacy_sshd

from remoteler.identity import UserIdentity, read_identity_file
from remoteler.resume.frames import FrameParser, FrameType
from remoteler.resume.handshake import Resume, resume_frame
from remoteler.resume.pipe import ResumablePipe
from remoteler.sshio import WebSocketPipe
from tsh.resume import open_pipe
from tsh.ssh import open_connect_ws

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

    def resumes(self) -> int:
        return self.text().count(b"resumed the session to ")

    def survives(self, what: str, brk: Callable[[], object]) -> None:
        """``brk`` breaks something; tsh must say it resumed, then the counter go on
        (lines already on their way cannot pass for a resume)."""
        before = self.resumes()
        brk()
        wait_for(lambda: self.resumes() > before, timeout=90, what=f"a resume {what}")
        self.advancing(f"the counter {what}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        os.close(self.master)


@dataclass
class Rig:
    cluster: Cluster
    agent_link: FaultProxy
    """between truck-042 and the hub"""
    short_link: FaultProxy
    """between truck-short (a 3 s resume grace) and the hub"""
    user_link: FaultProxy
    """between tsh and the hub (the profile's hub address)"""
    legacy_link: FaultProxy
    """between legacy-1 (forward mode, a real OpenSSH sshd) and the hub"""

    def env(self, **extra: str) -> dict[str, str]:
        return self.cluster.env(**extra)

    def key(self, user: str, home: Path | None = None) -> Path:
        home = home or self.cluster.tsh_home
        return home / "keys" / self.user_link.addr / user

    def login(self, user: str, home: Path | None = None, offset_steps: int = 0) -> None:
        env = self.env(TSH_HOME=str(home)) if home else self.env()
        out = self.cluster.tsh(
            "login",
            "--proxy",
            self.user_link.addr,
            "--user",
            user,
            "--ca-pin",
            self.cluster.ca_pin(),
            "--otp",
            current_totp(offset_steps=offset_steps),
            input=PASSWORD + "\n",
            env=env,
        )
        assert out.returncode == 0, out.stderr


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    """One hub, two agents each behind its own fault proxy, tsh behind a third. The
    last test kills and restarts the hub; the others leave everything running."""
    root = tmp_path_factory.mktemp("resume")
    cluster = Cluster(root, free_port())
    cluster.start_hub()
    with (
        FaultProxy("127.0.0.1", cluster.hub_port) as agent_link,
        FaultProxy("127.0.0.1", cluster.hub_port) as short_link,
        FaultProxy("127.0.0.1", cluster.hub_port) as user_link,
        FaultProxy("127.0.0.1", cluster.hub_port) as legacy_link,
    ):
        stack = contextlib.ExitStack()
        try:
            cluster.add_user("alice", [ME])
            cluster.add_user("bob", [ME])
            beat = ("--heartbeat-interval", "2", "--allowed-misses", "5")  # lenient under load
            cluster.start_agent("truck-042", "env=lab", None, *beat, hub=agent_link.addr)
            cluster.start_agent(
                "truck-short", "env=lab", None, *beat, "--resume-grace", "3", hub=short_link.addr
            )
            sshd = stack.enter_context(legacy_sshd(cluster, root, name="legacy-1"))
            cluster.start_agent(
                "legacy-1", "env=lab", None, *beat, "--ssh-target", sshd.target,
                hub=legacy_link.addr,
            )  # fmt: skip
            for name in ("truck-042", "truck-short", "legacy-1"):
                wait_for(lambda n=name: cluster.node_online(n), what=f"{name} online")  # type: ignore[misc]
            rig = Rig(cluster, agent_link, short_link, user_link, legacy_link)
            rig.login("alice")
            yield rig
        finally:
            cluster.stop()
            stack.close()


def _check_continuous(seen: list[tuple[int, int]]) -> None:
    pids = {pid for pid, _ in seen}
    assert len(pids) == 1, f"the shell changed: pids {sorted(pids)}"
    numbers = [n for _, n in seen]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), (
        "a gap or a duplicate: "
        + str([(a, b) for a, b in itertools.pairwise(numbers) if b != a + 1][:5])
    )


def _big_file(path: Path, mib: int) -> str:
    digest = hashlib.sha256()
    with path.open("wb") as f:
        for _ in range(mib):
            chunk = os.urandom(1 << 20)
            digest.update(chunk)
            f.write(chunk)
    return digest.hexdigest()


def _cut_three_times(proc: subprocess.Popen[bytes], dest: Path, size: int, link: FaultProxy) -> int:
    """Reset ``link`` when ``dest`` passes 1/4, 1/2 and 3/4 of ``size``; return the cuts made."""
    cuts = 0
    for quarter in (1, 2, 3):
        wait_for(
            lambda q=quarter: (
                proc.poll() is not None  # type: ignore[misc]
                or (dest.exists() and dest.stat().st_size >= size * q // 4)
            ),
            timeout=120,
            what=f"{quarter}/4 of the upload",
        )
        if proc.poll() is not None:
            break
        cuts += link.reset()
        time.sleep(0.5)
    return cuts


SIZE_MIB = 200


def _upload_with_three_cuts(rig: Rig, tmp_path: Path, argv: list[str]) -> None:
    """Copy a 200 MiB file with ``argv`` (its last item the remote ``login@host``),
    cutting the agent's link at 1/4, 1/2 and 3/4: it must exit 0 having resumed each
    time, and the file must arrive whole."""
    src, dest = tmp_path / "big.bin", tmp_path / "big.up"
    digest = _big_file(src, SIZE_MIB)
    proc = subprocess.Popen(
        [*argv[:-1], str(src), f"{argv[-1]}:{dest}"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=rig.env(),
    )
    try:
        cuts = _cut_three_times(proc, dest, SIZE_MIB << 20, rig.agent_link)
        _, err = proc.communicate(timeout=180)
    finally:
        stop_process(proc)
    assert proc.returncode == 0, err
    assert cuts >= 3, "the link was not cut three times mid-transfer"
    assert err.count(b"resumed the session to truck-042") >= 3, err
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == digest


@pytest.mark.timeout(240)
def test_tsh_scp_of_200_mib_survives_three_cuts_of_the_agents_link(
    rig: Rig, tmp_path: Path
) -> None:
    _upload_with_three_cuts(rig, tmp_path, [str(BIN / "tsh"), "scp", f"{ME}@truck-042"])


@pytest.mark.timeout(240)
def test_openssh_scp_of_200_mib_survives_three_cuts(rig: Rig, tmp_path: Path) -> None:
    """OpenSSH's own scp through ``tsh config``: its ProxyCommand (``tsh proxy ssh``)
    resumes under it, and ssh never sees the breaks."""
    require_binaries("ssh", "scp")
    config = tmp_path / "ssh_config"
    out = rig.cluster.tsh("config", env=rig.env())
    assert out.returncode == 0, out.stderr
    config.write_text(out.stdout)
    cluster_name = json.loads(rig.cluster.tsh("status", "--format", "json").stdout)["cluster"]
    host = f"{ME}@truck-042.{cluster_name}"
    _upload_with_three_cuts(rig, tmp_path, ["scp", "-F", str(config), "-o", "BatchMode=yes", host])


async def _resume_as(
    rig: Rig, ident: UserIdentity, session_id: str, token: bytes, received: int = 0
) -> tuple[FrameType, str]:
    """Ask the device to resume ``session_id`` as ``ident``, claiming ``received`` bytes:
    its answer's type and text."""
    ws = await open_connect_ws(rig.user_link.addr, ident, ME, "truck-042", resume=session_id)
    link = WebSocketPipe(ws)
    link.send(resume_frame(Resume(session_id, token, received)))
    parser = FrameParser()
    try:
        async with asyncio.timeout(20):
            while True:
                data = await link.recv()
                assert data, f"closed without an answer: {link.close_reason}"
                for frame in parser.feed(data):
                    text = frame.payload.decode("utf-8", "replace")
                    return frame.type, text
    finally:
        link.close()


@pytest.mark.timeout(120)
def test_a_stolen_resume_token_is_refused(rig: Rig, tmp_path: Path) -> None:
    """The token is bound to the user and to the key of the certificate that opened the
    session, and works once."""
    bob_home, alice2_home = tmp_path / "bob", tmp_path / "alice2"
    rig.login("bob", bob_home)
    rig.login("alice", alice2_home, offset_steps=1)  # alice again: a new key
    alice = read_identity_file(rig.key("alice"))
    bob = read_identity_file(rig.key("bob", bob_home))
    alice2 = read_identity_file(rig.key("alice", alice2_home))

    async def run() -> None:
        pipe, resumer = await open_pipe(rig.user_link.addr, alice, ME, "truck-042", print)
        assert isinstance(pipe, ResumablePipe) and resumer.hello is not None
        sid, token = resumer.hello.session_id, resumer.hello.token
        try:
            kind, why = await _resume_as(rig, bob, sid, token)
            assert (kind, why) == (
                FrameType.REFUSE,
                "this session belongs to another user or certificate",
            )
            kind, why = await _resume_as(rig, alice2, sid, token)
            assert kind == FrameType.REFUSE and "another user or certificate" in why
            kind, why = await _resume_as(rig, alice, sid, b"\0" * 32)
            assert kind == FrameType.REFUSE and "wrong resume token" in why
            # The real owner, with tsh's current token and count: the device's SSH banner
            # may have been acked by a keepalive already, and dropped from its buffer.
            token = resumer.token
            kind, why = await _resume_as(rig, alice, sid, token, pipe.stream.received)
            assert kind == FrameType.RESUMED, why
            kind, why = await _resume_as(rig, alice, sid, token)  # used once already
            assert kind == FrameType.REFUSE and "each token works once" in why, why
        finally:
            pipe.end("test over")

    asyncio.run(run())
    log = (rig.cluster.root / "agent-truck-042.log").read_text()
    assert "resume refused: another identity" in log and "resume refused: wrong token" in log
    assert token_hex_not_in(log, rig)


def token_hex_not_in(log: str, rig: Rig) -> bool:
    """No resume token in a log (they are random bytes: a hex or base64 form would show)."""
    return "token=" not in log and 'token":' not in log


@pytest.mark.timeout(120)
def _marker(lead: int) -> str:
    """A remote command no other test runs at the same time (modules run in parallel,
    and others run ``sleep 600``): ``sleep LNNN`` with this process's id."""
    return f"sleep {lead}{os.getpid() % 1000:03d}"


def _device_runs(command: str) -> bool:
    """A process runs exactly ``command`` (the device's side of a session): tsh's own
    command line holds the same words, so a substring match would see tsh."""
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return command in ps.splitlines()


def test_a_break_longer_than_the_grace_ends_with_the_documented_message(rig: Rig) -> None:
    """truck-short keeps a detached session 3 s: its link is reset and stays down."""
    wait_for(lambda: rig.cluster.node_online("truck-short"), what="truck-short online")
    marker = _marker(7)
    proc = subprocess.Popen(
        [str(BIN / "tsh"), "ssh", f"{ME}@truck-short", marker],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=rig.env(),
    )
    try:
        wait_for(lambda: _device_runs(marker), what="the remote command")
        rig.short_link.blackhole()  # new connections too: the device stays away
        rig.short_link.reset()
        _, err = proc.communicate(timeout=60)
    finally:
        stop_process(proc)
        rig.short_link.clear()
    lines = err.decode().splitlines()
    assert proc.returncode == 255, err
    assert lines[0].startswith("tsh: link to truck-short lost"), err
    assert lines[-1].startswith(
        "tsh: connection to 'truck-short' lost (not back within the device's 3 s resume grace"
    ), err
    # the device ended it too, and says so in the audit trail once its link is back
    wait_for(
        lambda: any(
            e.get("type") == "session.abandoned"
            for e in rig.cluster.tctl_json("audit", "search", "--type", "session.abandoned")
        ),
        timeout=60,
        what="session.abandoned in the audit trail",
    )


@pytest.mark.timeout(120)
def test_a_lock_ends_a_detached_session_and_tsh_says_why(rig: Rig, tmp_path: Path) -> None:
    """bob's link drops and stays down; a lock made meanwhile ends the session on the
    device (its shell gets SIGHUP), and tsh, once it reaches the hub, stops resuming."""
    marker = _marker(8)
    home = tmp_path / "bob"
    rig.login("bob", home, offset_steps=1)  # (the token test logged bob in at step 0)
    proc = subprocess.Popen(
        [str(BIN / "tsh"), "ssh", f"{ME}@truck-042", f"echo up; {marker}"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=rig.env(TSH_HOME=str(home)),
    )
    lock_id = ""
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"up\n"
        rig.user_link.blackhole()  # tsh cannot come back for now
        rig.user_link.reset()  # the hub sees the link go: the device detaches the session
        log = rig.cluster.root / "agent-truck-042.log"
        wait_for(lambda: "resumable session detached" in log.read_text(), what="detached")
        lock_id = rig.cluster.tctl_json("lock", "--user", "bob", "--message", "incident 42")["id"]
        wait_for(
            lambda: not _device_runs(marker),
            what="the lock to end the detached session's command",
        )
        rig.user_link.clear()
        _, err = proc.communicate(timeout=60)
    finally:
        stop_process(proc)
        rig.user_link.clear()
        if lock_id:
            rig.cluster.tctl("unlock", lock_id)
    assert proc.returncode == 255, err
    last = err.decode().splitlines()[-1]
    assert last.startswith("tsh: connection to 'truck-042' lost (not resumed: "), err
    assert "incident 42" in last or "locked" in last, err


@pytest.mark.timeout(120)
def test_a_hung_up_tsh_ends_its_session_at_once(rig: Rig) -> None:
    """SIGHUP (the terminal closed, or OpenSSH ending its ProxyCommand) means the user
    is gone, not the link: the device ends the session now, not after the grace."""
    marker = _marker(6)
    proc = subprocess.Popen(
        [str(BIN / "tsh"), "ssh", f"{ME}@truck-042", f"echo up; {marker}"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=rig.env(),
    )

    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"up\n"
        assert _device_runs(marker)
        proc.send_signal(signal.SIGHUP)
        assert proc.wait(10) in (255, -signal.SIGHUP)  # ended by the device, or the signal
        wait_for(lambda: not _device_runs(marker), timeout=10, what="the remote command to end")
    finally:
        stop_process(proc)


@pytest.mark.timeout(120)
def test_forward_mode_keeps_the_devices_own_sshd_session_across_resets(rig: Rig) -> None:
    """legacy-1 relays to a real OpenSSH sshd: the agent keeps that TCP connection for
    the session, so sshd's shell (same PID) never notices the agent's link going."""
    loop = 'i=0; while :; do echo "C $$ $i"; i=$((i+1)); sleep 0.05; done'
    screen = Screen([str(BIN / "tsh"), "ssh", f"{ME}@legacy-1", loop], rig.env())
    try:
        screen.advancing("the counter to start", timeout=30)
        for _ in range(2):
            screen.survives("after a reset", rig.legacy_link.reset)
    finally:
        screen.stop()
    assert b"resumed the session to legacy-1" in screen.text()
    _check_continuous(screen.counters())


@pytest.mark.timeout(240)
def test_counter_survives_blackhole_reset_and_hub_restart(rig: Rig) -> None:
    """Last in the module: it kills the hub."""
    cluster, agent_link, user_link = rig.cluster, rig.agent_link, rig.user_link
    screen = Screen([str(BIN / "tsh"), "ssh", f"{ME}@truck-042"], cluster.env(TERM="dumb"))
    try:
        wait_for(lambda: screen.text().rstrip().endswith((b"#", b"$")), what="a prompt")
        screen.type(LOOP)
        screen.advancing("the counter to start", timeout=30)

        def blackhole() -> None:  # the truck drives into a tunnel
            agent_link.blackhole()
            time.sleep(30)
            agent_link.clear()

        def hub_restart() -> None:  # the hub dies; the agent and tsh both dial a new one
            cluster.kill_hub()
            cluster.start_hub()

        screen.survives("after a 30 s black hole", blackhole)
        # the modem resets (RST both ways), then the technician's own link drops
        screen.survives("after the agent's link was reset", agent_link.reset)
        screen.survives("after the user's link was reset", user_link.reset)
        screen.survives("after the hub restarted", hub_restart)

        screen.type(b"\x03")  # ^C the loop
        screen.type(b"exit 7\n")
        assert screen.proc.wait(30) == 7
    finally:
        screen.stop()
    text = screen.text()
    assert b"resumed the session to truck-042" in text, text[-2000:]
    seen = screen.counters()
    _check_continuous(seen)

    # the device recorded one continuous session: the same numbers, from the same shell
    def ended() -> list[dict[str, object]]:
        return [
            e
            for e in cluster.tctl_json(
                "audit", "search", "--type", "session.end", "--user", "alice"
            )
            if e["fields"].get("exit_status") == 7
        ]

    session_id = str(wait_for(ended, timeout=60, what="session.end")[0]["session"])
    played = cluster.tsh("play", session_id, "--format", "text")
    assert played.returncode == 0, played.stderr
    recorded = [(int(p), int(n)) for p, n in COUNTER.findall(played.stdout.encode())]
    _check_continuous(recorded)
    assert set(seen) <= set(recorded), "the recording misses what the user saw"
    resumed = cluster.tctl_json("audit", "search", "--type", "session.resumed", "--user", "alice")
    mine = [e for e in resumed if e["session"] == session_id]
    assert len(mine) >= 4, resumed  # black hole, agent reset, user reset, hub restart
    assert all(e["fields"]["gap"] >= 0 for e in mine)
