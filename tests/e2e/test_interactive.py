"""An interactive ``tsh ssh login@node`` in a real terminal (tmux): prompt, TERM, resize, exit."""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import BIN, Cluster, wait_for
from require import require_binaries

ME = pwd.getpwuid(os.geteuid()).pw_name
TMUX = shutil.which("tmux") or ("/usr/bin/tmux" if os.path.exists("/usr/bin/tmux") else None)
TERM_TYPE = "screen-256color"
PROMPT = re.compile(r"[#$>%]\s*$")


@pytest.fixture(scope="module", autouse=True)
def _tools() -> None:
    """What this module runs: present, or every test fails with a one-line hint."""
    require_binaries("tmux")


class Tmux:
    """One private tmux server (its own socket), driven by commands; no terminal needed."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.sock = root / "tmux.sock"
        self.conf = root / "tmux.conf"
        self.conf.write_text(f'set -g default-terminal "{TERM_TYPE}"\nset -g history-limit 5000\n')
        self.env = env

    def run(self, *args: str) -> str:
        assert TMUX is not None
        proc = subprocess.run(
            [TMUX, "-S", str(self.sock), "-f", str(self.conf), *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=20,
            check=False,
        )
        if proc.returncode != 0:
            raise AssertionError(f"tmux {args} failed: {proc.stderr.strip()}")
        return proc.stdout

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-J", "-S", "-", "-t", "t")

    def type(self, line: str) -> None:
        self.run("send-keys", "-t", "t", "-l", line)
        self.run("send-keys", "-t", "t", "Enter")

    def wait(self, pattern: str, what: str, timeout: float = 30.0) -> str:
        regex = re.compile(pattern, re.MULTILINE)

        def found() -> str | None:
            text = self.screen()
            return text if regex.search(text) else None

        try:
            return str(wait_for(found, timeout=timeout, interval=0.1, what=what))
        except AssertionError:
            raise AssertionError(
                f"timed out waiting for {what}; screen:\n{self.screen()}"
            ) from None

    def server_pid(self) -> int | None:
        try:
            return int(self.run("display-message", "-p", "#{pid}").strip())
        except (AssertionError, ValueError):
            return None

    def kill(self) -> None:
        pid = self.server_pid()
        with contextlib.suppress(AssertionError):
            self.run("kill-server")
        if pid is not None:
            try:
                wait_for(lambda: not Path(f"/proc/{pid}").exists(), timeout=10, what="tmux exit")
            except AssertionError:
                os.kill(pid, 9)


@pytest.fixture
def tmux(cluster: Cluster) -> Iterator[Tmux]:
    t = Tmux(cluster.root, cluster.env())
    try:
        yield t
    finally:
        t.kill()


def _last_line(screen: str) -> str:
    lines = [x for x in screen.splitlines() if x.strip()]
    return lines[-1] if lines else ""


def test_interactive_shell_term_resize_and_exit_status(cluster: Cluster, tmux: Tmux) -> None:
    cluster.add_user("ivy", [ME])
    cluster.start_agent("dev1", "env=lab")
    wait_for(lambda: cluster.node_online("dev1"), what="dev1 online")
    assert cluster.login("ivy").returncode == 0

    # stale $COLUMNS/$LINES (a shell exported them once) must not override the real size
    tsh = shlex.join(["env", "COLUMNS=50", "LINES=10", str(BIN / "tsh"), "ssh", f"{ME}@dev1"])
    # the pane's shell prints tsh's exit status, then stays so the pane can be read
    tmux.run(
        "new-session", "-d", "-s", "t", "-x", "100", "-y", "30",
        f"{tsh}; echo EXIT=$?; exec sleep 600",
    )  # fmt: skip

    wait_for(
        lambda: PROMPT.search(_last_line(tmux.screen())), timeout=30, interval=0.1, what="prompt"
    )
    tmux.type("PS1='rmt> '")
    tmux.wait(r"^rmt> $", "the new prompt")

    tmux.type("echo T=$TERM; stty size | sed 's/^/S=/'; tty | sed 's/^/Y=/'")
    screen = tmux.wait(r"^Y=.*\n+rmt> $", "the output and the next prompt")
    assert re.search(rf"^T={re.escape(TERM_TYPE)}$", screen, re.MULTILINE), screen
    assert re.search(r"^S=30 100$", screen, re.MULTILINE), screen
    assert re.search(r"^Y=/dev/pts/\d+$", screen, re.MULTILINE), screen

    # window-change: tsh gets SIGWINCH from the terminal and tells the node
    tmux.run("resize-window", "-t", "t", "-x", "120", "-y", "40")
    tmux.wait(r"^rmt> $", "the prompt after the resize")

    def new_size() -> str | None:
        tmux.type("stty size | sed 's/^/R=/'")
        text = tmux.wait(r"^R=\d+ \d+$", "stty size after resize")
        sizes = re.findall(r"^R=(\d+ \d+)$", text, re.MULTILINE)
        return text if sizes[-1] == "40 120" else None

    # bounded retry: the window-change message may arrive just after the command ran
    screen = wait_for(new_size, timeout=15, interval=0.2, what="the pty to get the new size")
    assert "R=40 120" in screen

    tmux.type("exit 7")
    screen = tmux.wait(r"^EXIT=\d+$", "tsh to exit")
    assert re.search(r"^EXIT=7$", screen, re.MULTILINE), screen
    assert "Traceback" not in screen
