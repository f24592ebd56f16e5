"""What provisioning writes: TOML the agent's own config loader accepts, values checked."""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent import config
from edge_agent.cli import build_parser
from firmware_tools.provision import AgentSettings, render, toml_string, write_script
from remoteler.errors import UsageError

PIN = "sha256:" + "0f" * 32


@given(st.text())
def test_any_string_survives_toml(text: str) -> None:
    assert tomllib.loads(f"k = {toml_string(text)}")["k"] == text


def test_the_agent_loads_what_provisioning_writes(tmp_path: Path) -> None:
    settings = AgentSettings(
        hub="hub.example:3025", ca_pin=PIN, token='t"ok\\en', labels="env=prod",
        name="truck-042", data_dir="/data/agent",
    )  # fmt: skip
    path = tmp_path / "agent.toml"
    path.write_text(render(settings))
    path.chmod(0o600)
    values = config.load(path, config.subparser(build_parser(), "start"))
    assert values == {
        "hub": "hub.example:3025", "ca_pin": PIN, "token": 't"ok\\en', "labels": "env=prod",
        "name": "truck-042", "data_dir": "/data/agent",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("change", "word"),
    [
        ({"hub": "no-port"}, "port"),
        ({"ca_pin": "sha256:abc"}, "--ca-pin"),
        ({"token": "two words"}, "--token"),
        ({"token": ""}, "--token"),
        ({"labels": "novalue"}, "label"),
        ({"name": "a b"}, "--name"),
    ],
)
def test_values_the_agent_would_refuse_are_refused_now(change: dict[str, str], word: str) -> None:
    base = {"hub": "h:1", "ca_pin": PIN, "token": "tok"}
    with pytest.raises(UsageError, match=word):
        render(AgentSettings(**(base | change)))


def test_the_serial_script_run_by_a_real_shell_writes_the_file(tmp_path: Path) -> None:
    target = tmp_path / "it's here" / "agent.toml"
    text = render(AgentSettings(hub="h:1", ca_pin=PIN, token="tok"))
    out = subprocess.run(
        ["/bin/sh", "-s"], input=write_script(text, str(target), "n0nce"), capture_output=True
    )
    assert out.returncode == 0, out.stderr
    assert target.read_text() == text and (target.stat().st_mode & 0o777) == 0o600
    assert b"RMTL_42_n0nce_SUM " in out.stdout


def test_owner_applies_to_the_agents_files_only(tmp_path: Path) -> None:
    import os

    from firmware_tools.provision import provision_dir

    unit = tmp_path / "x.service"
    unit.write_text("[Service]\nExecStart=/bin/true\n")
    root = tmp_path / "image"
    root.mkdir()
    text = render(AgentSettings(hub="h:1", ca_pin=PIN, token="tok"))
    if os.geteuid() != 0:
        with pytest.raises(UsageError, match="fakeroot"):
            provision_dir(root, text, unit, owner=(0, 0))
        return
    written = provision_dir(root, text, unit, owner=(4321, 4321))
    rel = [p.relative_to(root).as_posix() for p in written]
    assert rel[3:] == ["etc/remoteler", "var/lib/remoteler-agent"]
    owned = {p.relative_to(root).as_posix(): os.lstat(p).st_uid for p in written}
    assert owned["etc/remoteler/agent.toml"] == 4321
    assert owned["etc/remoteler"] == owned["var/lib/remoteler-agent"] == 4321
    assert owned["etc/systemd/system/remoteler-agent.service"] == os.geteuid()
    assert owned["etc/systemd/system/multi-user.target.wants/remoteler-agent.service"] == (
        os.geteuid()
    )
    assert (written[0].stat().st_mode & 0o777) == 0o600


@pytest.mark.parametrize("data_dir", ["/../outside", "/var/../../outside", "/", "/var/.."])
def test_a_data_dir_outside_the_image_is_refused_before_anything_changes(
    tmp_path: Path, data_dir: str
) -> None:
    # --owner chowns and chmods the data dir: it must be a directory inside the image,
    # never the build host's (tmp_path/outside) nor the image's root itself.
    import os

    from firmware_tools.provision import provision_dir

    root = tmp_path / "image"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir(mode=0o755)
    before = {p: os.lstat(p) for p in (root, outside)}
    text = render(AgentSettings(hub="h:1", ca_pin=PIN, token="tok"))
    with pytest.raises(UsageError, match="--data-dir") as err:
        provision_dir(root, text, None, owner=(4321, 4321), data_dir=data_dir)
    assert "\n" not in str(err.value)
    for path, old in before.items():
        now = os.lstat(path)
        assert (now.st_uid, now.st_mode) == (old.st_uid, old.st_mode), path
    assert list(root.iterdir()) == []  # refused before the config was written


def test_a_leftover_world_readable_tmp_file_never_holds_the_token(tmp_path: Path) -> None:
    import os
    import shutil

    target = tmp_path / "etc" / "agent.toml"
    target.parent.mkdir()
    leftover = target.with_name("agent.toml.tmp")
    leftover.write_text("old")
    leftover.chmod(0o644)
    # A base64 that notes the mode of the file it writes to, then decodes as usual.
    bin_dir, log = tmp_path / "bin", tmp_path / "mode.log"
    bin_dir.mkdir()
    fake = bin_dir / "base64"
    fake.write_text(
        f'#!/bin/sh\nstat -c %a "$(readlink /proc/$$/fd/1)" > {log}\n'
        f'exec {shutil.which("base64")} "$@"\n'
    )
    fake.chmod(0o755)
    text = render(AgentSettings(hub="h:1", ca_pin=PIN, token="tok"))
    out = subprocess.run(
        ["/bin/sh", "-s"],
        input=write_script(text, str(target), "n0nce"),
        capture_output=True,
        env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"},
    )
    assert out.returncode == 0, out.stderr
    assert log.read_text().strip() == "600"
    assert target.read_text() == text and not leftover.exists()


def _image(tmp_path: Path) -> tuple[Path, Path, str]:
    unit = tmp_path / "x.service"
    unit.write_text("[Service]\nExecStart=/bin/true\n")
    root = tmp_path / "image"
    (root / "etc/systemd/system").mkdir(parents=True)
    return root, unit, render(AgentSettings(hub="h:1", ca_pin=PIN, token="tok"))


@pytest.mark.parametrize(
    "link",
    [
        "etc/systemd/system/remoteler-agent.service",  # a unit symlinked to a host file
        "etc/remoteler",  # an absolute link in the image: the host's /etc/remoteler
        "etc/remoteler/agent.toml",
        "etc/systemd/system/multi-user.target.wants",
    ],
)
def test_provision_never_writes_through_a_symlink_in_the_image(tmp_path: Path, link: str) -> None:
    from firmware_tools.provision import provision_dir

    root, unit, text = _image(tmp_path)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "file").write_text("keep")
    (victim / "file").chmod(0o600)
    path = root / link
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(victim / "file" if link.endswith((".service", ".toml")) else victim)
    with pytest.raises(UsageError, match="is a symlink") as err:
        provision_dir(root, text, unit)
    assert "\n" not in str(err.value)
    assert sorted(p.name for p in victim.iterdir()) == ["file"]
    assert (victim / "file").read_text() == "keep"
    assert ((victim / "file").stat().st_mode & 0o777) == 0o600
    if not link.startswith("etc/remoteler"):
        assert not (root / "etc/remoteler").exists()  # refused before anything was written


def test_provision_replaces_what_it_wrote_before(tmp_path: Path) -> None:
    from firmware_tools.provision import provision_dir

    root, unit, text = _image(tmp_path)
    provision_dir(root, text, unit)
    written = provision_dir(root, text, unit)
    assert [p.relative_to(root).as_posix() for p in written] == [
        "etc/remoteler/agent.toml",
        "etc/systemd/system/remoteler-agent.service",
        "etc/systemd/system/multi-user.target.wants/remoteler-agent.service",
    ]
    assert (written[0].stat().st_mode & 0o777) == 0o600
    assert (written[1].stat().st_mode & 0o777) == 0o644 and not written[1].is_symlink()
    assert sorted(p.name for p in written[0].parent.iterdir()) == ["agent.toml"]
