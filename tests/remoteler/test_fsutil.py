"""remoteler.fsutil: atomic writes that never write through a planted link, the 0600 check."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from remoteler.errors import ConfigError
from remoteler.fsutil import check_secret_file_mode, write_file_atomic, write_secret_file


def test_a_symlink_at_the_path_is_replaced_not_written_through(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    victim.chmod(0o600)
    link = tmp_path / "state.json"
    link.symlink_to(victim)
    write_file_atomic(link, b"new", 0o644)
    assert not link.is_symlink() and link.read_bytes() == b"new"
    assert victim.read_bytes() == b"keep" and victim.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json", "victim"]


def test_a_secret_is_0600_and_a_failed_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    old = os.umask(0)
    try:
        write_secret_file(path, b"token")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o600
    with pytest.raises(IsADirectoryError):
        write_file_atomic(tmp_path, b"x")  # the rename onto a directory fails
    assert sorted(p.name for p in tmp_path.iterdir()) == ["agent.toml"]


def test_check_secret_file_mode_raises_the_callers_error(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    write_secret_file(path, b"x")
    check_secret_file_mode(path, ConfigError)
    path.chmod(0o640)
    with pytest.raises(ConfigError, match=rf"^{path} \(the token\) is .*0640.*chmod 600 {path}"):
        check_secret_file_mode(path, ConfigError, f"{path} (the token)")
    with pytest.raises(ConfigError, match="does not exist"):
        check_secret_file_mode(tmp_path / "missing", ConfigError)


def test_the_agents_light_modules_do_not_load_cryptography() -> None:
    code = (
        "import json, sys\n"
        "import edge_agent.health, edge_agent.slots, edge_agent.config\n"
        "import firmware_tools.provision, remoteler.fsutil\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    modules = set(json.loads(out.stdout))
    assert "remoteler.fsutil" in modules
    assert sorted(m for m in modules if m.split(".")[0] in ("cryptography", "asyncssh")) == []
