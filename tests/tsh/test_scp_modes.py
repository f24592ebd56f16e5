"""tsh/scp_modes.py without a node: the modes OpenSSH's scp gives, and the order and
number of chmods a copy sends."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from tsh.scp_modes import CHMODS_IN_FLIGHT, ModeFixer, final_mode, local_entries


@pytest.mark.parametrize(
    ("mode", "is_dir", "upload", "existed", "want"),
    [
        (0o100640, False, True, False, 0o640),
        (0o100640, False, False, False, 0o640),
        (0o100444, False, True, False, 0o444),  # do_upload sends the bits as they are
        (0o100444, False, False, False, 0o644),  # do_download adds S_IWUSR
        (0o100777, False, True, False, 0o755),  # less the umask
        (0o104755, False, True, False, 0o755),  # never setuid/setgid/sticky without -p
        (0o100640, False, True, True, None),  # a file already there keeps its mode
        (0o100640, False, False, True, None),
        (0o040500, True, True, False, 0o500),  # upload_dir's SETSTAT: the bits exactly
        (0o040777, True, True, False, 0o777),  # ... with no umask
        (0o041777, True, True, True, 0o1777),  # ... sticky kept, on one already there too
        (0o040500, True, False, False, 0o500),  # download_dir: chmod back after u+wx
        (0o040555, True, False, True, 0o555),
        (0o040777, True, False, False, 0o755),  # nothing taken away: mkdir's, less the umask
        (0o040755, True, False, True, None),  # ... and one already there is left alone
    ],
)
def test_final_mode_as_openssh_scp(
    mode: int, is_dir: bool, upload: bool, existed: bool, want: int | None
) -> None:
    assert final_mode(mode, is_dir, upload, 0o022, existed) == want


def test_local_entries_children_first_links_skipped(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "f").write_text("f")
    (tmp_path / "top").write_text("t")
    (tmp_path / "link").symlink_to("top")
    (tmp_path / "dirlink").symlink_to("a")
    rels = [e.rel for e in local_entries(str(tmp_path))]
    assert rels == ["a/b/f", "a/b", "a", "top", ""]
    assert len(local_entries(str(tmp_path), limit=2)) < len(rels)  # the walk stops early


class _Node:
    """Records chmods and how many were in flight at once."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        self.in_flight = 0
        self.most = 0

    async def chmod(self, path: str, mode: int) -> None:
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        await asyncio.sleep(0)
        self.calls.append((path, mode))
        self.in_flight -= 1


async def test_upload_chmods_in_flight_files_then_deepest_directories(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "d" / "e").mkdir(parents=True)
    for i in range(150):
        (src / f"f{i}").write_text("x")
    (src / "d" / "e" / "g").write_text("x")
    (src / "kept").write_text("x")
    os.chmod(src / "d", 0o700)
    node = _Node()
    fixer = ModeFixer(node, upload=True, umask=0o022)
    fixer._existing = {"kept"}  # already on the node: keeps its mode
    await fixer.after(str(src), "/dst")
    paths = [p for p, _ in node.calls]
    assert "/dst/kept" not in paths and len(paths) == 150 + 1 + 3  # files, g, e, d, root
    assert paths[-3:] == ["/dst/d/e", "/dst/d", "/dst"]  # directories last, deepest first
    assert dict(node.calls)["/dst/d"] == 0o700
    assert 1 < node.most <= CHMODS_IN_FLIGHT
