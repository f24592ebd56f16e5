"""hub without the [hub] extra: one line naming the install command; tctl, a client of
the hub, needs no extra."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

# A fresh interpreter in which argon2 and pyotp cannot be found, as after
# 'pip install remoteler' without the extra.
RUNNER = textwrap.dedent(
    """
    import importlib.util, sys
    real = importlib.util.find_spec
    importlib.util.find_spec = lambda n, *a: None if n in ("argon2", "pyotp") else real(n, *a)
    class Block:
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in ("argon2", "pyotp"):
                raise ImportError(f"No module named {name!r}")
    sys.meta_path.insert(0, Block())
    import importlib
    main = importlib.import_module(sys.argv[1]).main
    sys.exit(main(sys.argv[2:]))
    """
)


@pytest.mark.parametrize(
    ("module", "args", "prog"), [("hub.cli", ["start", "--data-dir", "DATA"], "hub")]
)
def test_missing_hub_extra_is_one_line(
    module: str, args: list[str], prog: str, tmp_path: Path
) -> None:
    argv = [a.replace("DATA", str(tmp_path / "data")) for a in args]
    done = subprocess.run(
        [sys.executable, "-c", RUNNER, module, *argv], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines == [
        f"{prog}: missing argon2, pyotp: the hub needs "
        "\"pip install 'remoteler[hub]'\" (an agent-only install leaves them out)"
    ]
    assert not (tmp_path / "data").exists()  # refused before touching anything


def test_tctl_needs_no_hub_extra(tmp_path: Path) -> None:
    """tctl imports no hub code: without argon2 and pyotp it goes on to find the hub."""
    done = subprocess.run(
        [sys.executable, "-c", RUNNER, "tctl.cli", "--data-dir", str(tmp_path), "status"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1 and "not a hub data directory" in done.stderr, done.stderr
    assert "missing" not in done.stderr


def test_present_extra_passes() -> None:
    from hub.extras import require_hub_extra

    require_hub_extra()
