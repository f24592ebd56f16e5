"""Payload packing and safe extraction, with hand-made hostile archives."""

from __future__ import annotations

import contextlib
import io
import os
import tarfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_tools.archive import pack_payload, safe_extract
from firmware_tools.bundle import UnsafeArchive, build_bundle, read_header, verify_bundle
from remoteler.errors import UsageError


def hostile(path: Path, *entries: tarfile.TarInfo) -> Path:
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for info in entries:
            data = b"x" * info.size if info.isreg() else None
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def entry(
    name: str, kind: bytes = tarfile.REGTYPE, link: str = "", size: int = 1
) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.size = size if kind == tarfile.REGTYPE else 0
    info.mode = 0o644
    return info


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([entry("/etc/evil")], "absolute"),
        ([entry("ok"), entry("../evil")], r"'\.\.'"),
        ([entry("a/../../evil")], r"'\.\.'"),
        ([entry("l", tarfile.SYMTYPE, "/etc")], "points outside"),
        ([entry("d/l", tarfile.SYMTYPE, "../../etc")], "points outside"),
        ([entry("h", tarfile.LNKTYPE, "/etc/passwd")], "hard link"),
        ([entry("h", tarfile.LNKTYPE, "later"), entry("later")], "hard link"),
        ([entry("tty", tarfile.CHRTYPE)], "device"),
        ([entry("sda", tarfile.BLKTYPE)], "device"),
        ([entry("fifo", tarfile.FIFOTYPE)], "device"),
        ([entry("a"), entry("a", tarfile.SYMTYPE, "first")], "duplicate"),
        ([entry("./a")], "components"),
        ([entry("a/.")], "components"),
    ],
)
def test_refused_before_anything_is_written(
    tmp_path: Path, entries: list[tarfile.TarInfo], message: str
) -> None:
    dest = tmp_path / "slot"
    dest.mkdir()
    tar = hostile(tmp_path / "p.tar", entry("first"), *entries)
    with pytest.raises(UnsafeArchive, match=message):
        safe_extract(tar, dest)
    assert list(dest.iterdir()) == []


def test_symlink_chain_escape_is_refused(tmp_path: Path) -> None:
    """Lexically inside (``l/..``), but ``l`` is a link to ``.``: only realpath sees it."""
    dest = tmp_path / "slot"
    dest.mkdir()
    tar = hostile(
        tmp_path / "p.tar",
        entry("l", tarfile.SYMTYPE, "."),
        entry("m", tarfile.SYMTYPE, "l/.."),
        entry("m/escaped"),
    )
    with pytest.raises(UnsafeArchive):
        safe_extract(tar, dest)
    assert not (tmp_path / "escaped").exists()


def test_not_a_tar(tmp_path: Path) -> None:
    bad = tmp_path / "p.tar"
    bad.write_bytes(os.urandom(3000))
    with pytest.raises(UnsafeArchive, match="not a valid tar"):
        safe_extract(bad, tmp_path)


def test_pack_and_extract_a_verified_bundle(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "lib").mkdir(parents=True)
    (src / "install.sh").write_text("#!/bin/sh\n")
    (src / "install.sh").chmod(0o750)
    (src / "lib" / "libfw.so.1").write_bytes(b"elf")
    (src / "lib" / "libfw.so").symlink_to("libfw.so.1")
    (src / "bin").mkdir()
    (src / "bin" / "fw").symlink_to("../lib/libfw.so")
    key = Ed25519PrivateKey.generate()
    out = tmp_path / "b.bundle"
    build_bundle(
        src,
        out,
        name="fw",
        version="2",
        targets={"k": "v"},
        min_agent_version="0",
        install_hook="install.sh",
        key=key,
    )
    verify_bundle(
        out, [key.public_key()], labels={"k": "v"}, installed_version="1", agent_version="1"
    )
    _, _, offset = read_header(out)
    slot = tmp_path / "slot"
    slot.mkdir()
    names = safe_extract(out, slot, offset=offset)
    assert names == ["bin", "bin/fw", "install.sh", "lib", "lib/libfw.so", "lib/libfw.so.1"]
    assert (slot / "bin" / "fw").read_bytes() == b"elf"
    assert os.access(slot / "install.sh", os.X_OK)
    assert (slot / "lib" / "libfw.so.1").stat().st_mode & 0o777 == 0o644
    pack_payload(src, tmp_path / "p.tar", install_hook="install.sh")
    with tarfile.open(tmp_path / "p.tar") as tar:
        assert {(m.uid, m.gid, m.uname, m.gname) for m in tar.getmembers()} == {(0, 0, "", "")}


def test_pack_refuses_escaping_or_special_entries(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "install.sh").write_text("#!/bin/sh\n")
    (src / "install.sh").chmod(0o755)
    (src / "etc").symlink_to("/etc")
    with pytest.raises(UsageError, match="points outside the payload"):
        pack_payload(src, tmp_path / "p.tar", install_hook="install.sh")
    (src / "etc").unlink()
    os.mkfifo(src / "pipe")
    with pytest.raises(UsageError, match="FIFO"):
        pack_payload(src, tmp_path / "p.tar", install_hook="install.sh")
    with pytest.raises(UsageError, match="does not exist"):
        pack_payload(tmp_path / "nope", tmp_path / "p.tar", install_hook="install.sh")


PARTS = st.sampled_from(["a", "b", "..", ".", "", "l", "m"])
NAMES = st.lists(PARTS, min_size=1, max_size=4).map("/".join)
TARGETS = st.one_of(NAMES, NAMES.map(lambda n: "/" + n))
ENTRIES = st.lists(
    st.tuples(
        NAMES,
        st.sampled_from([tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE]),
        TARGETS,
    ),
    min_size=1,
    max_size=6,
)


@settings(max_examples=150, deadline=None)
@given(ENTRIES)
def test_generated_archives_land_inside_or_are_refused(
    tmp_path_factory: pytest.TempPathFactory, entries: list[tuple[str, bytes, str]]
) -> None:
    root = tmp_path_factory.mktemp("g")
    dest = root / "slot"
    dest.mkdir()
    try:
        tar = hostile(root / "p.tar", *(entry(n, kind, link) for n, kind, link in entries))
    except ValueError:  # a name tarfile itself cannot write
        return
    with contextlib.suppress(UnsafeArchive):
        safe_extract(tar, dest)
    assert {p.name for p in root.iterdir()} == {"slot", "p.tar"}
    inside = str(dest.resolve())
    for path in dest.rglob("*"):
        real = os.path.realpath(path)
        assert real == inside or real.startswith(inside + os.sep)  # a link to "." is fine
