"""tests/nosftp.py: accounts left by a killed run are removed by the next one, and
only those."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from nosftp import os_user, owner_comment, remove_stale_users


def test_accounts_of_a_killed_run_are_removed_at_the_next() -> None:
    gone = subprocess.Popen(["sleep", "30"])  # stands for a run killed before its cleanup
    comment = owner_comment(gone.pid)
    gone.kill()
    gone.wait()
    home = Path(tempfile.mkdtemp(prefix="rmtstale-"))
    name = f"rmtstale{gone.pid % 100000}"
    made = subprocess.run(
        ["useradd", "--no-create-home", "--home-dir", str(home), "--comment", comment, name],
        capture_output=True,
        text=True,
    )
    assert made.returncode == 0, made.stderr
    try:
        with os_user("rmtlive") as live:
            with pytest.raises(KeyError):
                pwd.getpwnam(name)
            assert not home.exists(), "its home under the temporary directory goes too"
            assert pwd.getpwnam(live.name).pw_gecos == owner_comment(os.getpid())
            assert live.name not in remove_stale_users(), "a live run's account stays"
            pwd.getpwnam(live.name)
    finally:
        subprocess.run(["userdel", name], capture_output=True, check=False)
        shutil.rmtree(home, ignore_errors=True)
