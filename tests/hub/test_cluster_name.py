"""The cluster name is the DNS suffix of node names and the known_hosts pattern
``*.<cluster>`` (tctl auth export --type host, tsh config): a name with pattern
characters would make the host CA vouch for any host. ``hub start`` refuses one on
first start with one line; a data dir made before keeps its name."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hub.datadir import DataDir
from remoteler.errors import ConfigError

BIN = Path(sys.executable).parent


@pytest.mark.parametrize("name", ["a,*", "*", "x.*", "!x", "a b", "a?", "-x", "x.", "", "é"])
def test_a_cluster_name_with_pattern_characters_is_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="bad --cluster-name"):
        DataDir(tmp_path / "d").init(name)
    assert not (tmp_path / "d" / "cluster.json").exists()


@pytest.mark.parametrize("name", ["remoteler", "fleet.example.com", "lab-2", "T"])
def test_dns_names_are_fine(tmp_path: Path, name: str) -> None:
    assert DataDir(tmp_path / "d").init(name) == name


def test_hub_start_says_so_in_one_line(tmp_path: Path) -> None:
    run = subprocess.run(
        [str(BIN / "hub"), "start", "--data-dir", str(tmp_path / "d"), "--listen",
         "127.0.0.1:0", "--cluster-name", "fleet,*"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode != 0 and run.stderr.count("\n") == 1, run.stderr
    assert "bad --cluster-name 'fleet,*'" in run.stderr


def test_an_existing_data_dir_keeps_its_name(tmp_path: Path) -> None:
    path = tmp_path / "d"
    path.mkdir()
    (path / "cluster.json").write_text(json.dumps({"cluster": "old_name"}))
    assert DataDir(path).init("ignored") == "old_name"
