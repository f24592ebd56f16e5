"""packaging/systemd: the unit's sandbox and restart policy; systemd-analyze verify if present."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from require import require_binary

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "packaging" / "systemd" / "remoteler-agent.service"
DROP_IN = ROOT / "packaging" / "systemd" / "full-access.conf"
DATA = "/var/lib/remoteler-agent"


def directives(text: str) -> dict[tuple[str, str], list[str]]:
    """``{(section, key): [values...]}``; systemd allows a key more than once."""
    out: dict[tuple[str, str], list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            assert line.endswith("]"), line
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep and key.strip() and section, f"not a directive: {line!r}"
        out.setdefault((section, key.strip()), []).append(value.strip())
    return out


def test_the_unit_is_sandboxed_and_restarts() -> None:
    d = directives(UNIT.read_text())
    svc = {k: v[-1] for (s, k), v in d.items() if s == "Service"}
    assert svc["ProtectSystem"] == "strict"
    assert svc["ReadWritePaths"] == DATA
    assert svc["NoNewPrivileges"] == "yes"
    assert svc["Restart"] == "always" and float(svc["RestartSec"]) > 0
    assert svc["ExecStart"].split()[:2] == ["/usr/local/bin/edge-agent", "start"]
    assert f"--data-dir {DATA}" in svc["ExecStart"]
    assert svc["LoadCredential"] == "agent.toml:/etc/remoteler/agent.toml"
    assert d[("Install", "WantedBy")] == ["multi-user.target"]


def test_the_full_access_drop_in_undoes_the_sandbox() -> None:
    d = {k: v[-1] for (s, k), v in directives(DROP_IN.read_text()).items() if s == "Service"}
    assert d["User"] == "root" and d["DynamicUser"] == "no"
    assert d["ProtectSystem"] == "no" and d["NoNewPrivileges"] == "no"


#: The unit's sandboxing directives: each one the unit sets, the drop-in resets.
SANDBOX = re.compile(
    r"(Protect|Private|Restrict|Lock|NoNewPrivileges|RemoveIPC|SystemCall|ReadWritePaths"
    r"|ReadOnlyPaths|InaccessiblePaths|CapabilityBoundingSet|AmbientCapabilities|Device)"
)


def test_the_full_access_drop_in_resets_every_sandbox_directive_of_the_unit() -> None:
    unit = {k for (s, k) in directives(UNIT.read_text()) if s == "Service" and SANDBOX.match(k)}
    assert {"ProtectKernelTunables", "LockPersonality", "SystemCallArchitectures"} <= unit
    drop_in = {k: v[-1] for (s, k), v in directives(DROP_IN.read_text()).items() if s == "Service"}
    left = sorted(k for k in unit if drop_in.get(k) not in ("no", ""))
    assert left == [], f"full-access.conf leaves these sandbox directives on: {left}"


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    exe = require_binary("systemd-analyze")
    # verify wants ExecStart's binary to exist: point it at this checkout's agent.
    agent = Path(sys.executable).parent / "edge-agent"
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/edge-agent", str(agent)))
    for with_drop_in in (False, True):
        if with_drop_in:
            (tmp_path / f"{UNIT.name}.d").mkdir()
            shutil.copy(DROP_IN, tmp_path / f"{UNIT.name}.d" / DROP_IN.name)
        out = subprocess.run(
            [exe, "verify", str(unit)], capture_output=True, text=True, timeout=60, cwd=tmp_path
        )
        # Unknown or misspelt keys are only warned about: a warning naming the file fails.
        noise = [ln for ln in out.stderr.splitlines() if UNIT.name in ln]
        assert out.returncode == 0 and not noise, out.stderr
