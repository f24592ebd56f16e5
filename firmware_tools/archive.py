"""The payload archive: packing a directory at build time, extracting it safely on the device.

The payload is always a POSIX ustar archive: a directory's contents (paths
relative to it, sorted), or a single file under its base name. Entries are
directories, regular files and relative symlinks that stay inside the tree;
owners are 0/0 with no names, modes 0755 for directories and executables and
0644 otherwise, so the archive does not leak the build machine's accounts.

:func:`safe_extract` refuses, before it writes anything, an archive with an
absolute path, a ``..``, ``.`` or empty component, a duplicate name, a path under an entry
that is not a directory (nothing is written through a symlink), a device file,
FIFO or other special entry, a symlink whose target is absolute or leaves the
destination, or a hard link to anything but an earlier regular file; it then
extracts with Python's ``data`` filter (PEP 706), which re-checks every path
with ``realpath`` on disk, so a chain of symlinks cannot escape either.
"""

from __future__ import annotations

import os
import posixpath
import stat
import tarfile
from pathlib import Path

from firmware_tools.errors import UnsafeArchive
from remoteler.errors import UsageError

#: Most entries an archive may hold; more is refused before extraction.
MAX_ENTRIES = 100_000


def _inside(link_dir: str, target: str) -> bool:
    """True when ``target``, relative to ``link_dir``, stays inside the root (lexically)."""
    if target.startswith("/") or not target:
        return False
    joined = posixpath.normpath(posixpath.join(link_dir, target))
    return joined != ".." and not joined.startswith("../")


def _add(tar: tarfile.TarFile, path: Path, arcname: str) -> None:
    st = path.lstat()
    info = tarfile.TarInfo(arcname)
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = int(st.st_mtime)
    if stat.S_ISLNK(st.st_mode):
        target = os.readlink(path)
        if not _inside(posixpath.dirname(arcname), target):
            raise UsageError(
                f"payload symlink {arcname} -> {target} points outside the payload: "
                "make it relative and inside the payload directory"
            )
        info.type, info.linkname, info.mode = tarfile.SYMTYPE, target, 0o777
        tar.addfile(info)
    elif stat.S_ISDIR(st.st_mode):
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(info)
    elif stat.S_ISREG(st.st_mode):
        info.size = st.st_size
        info.mode = 0o755 if st.st_mode & 0o111 else 0o644
        with path.open("rb") as f:
            tar.addfile(info, f)
    else:
        raise UsageError(
            f"payload entry {arcname} is a device, FIFO or socket: "
            "only files, directories and symlinks can be shipped"
        )


def pack_payload(payload: Path, out: Path, *, install_hook: str) -> None:
    """Write ``payload`` (a directory or a file) as a ustar archive to ``out``.

    ``install_hook`` must be an executable regular file in it; raise UsageError
    otherwise.
    """
    if not payload.exists():
        raise UsageError(f"payload {payload} does not exist: pass a directory or a file")
    entries: list[tuple[Path, str]] = []
    if payload.is_dir():
        for root, dirs, files in os.walk(payload):
            dirs.sort()
            rel = os.path.relpath(root, payload)
            for name in sorted(dirs + files):
                arc = name if rel == "." else f"{rel}/{name}"
                entries.append((Path(root) / name, arc.replace(os.sep, "/")))
        entries.sort(key=lambda e: e[1])
    else:
        entries.append((payload, payload.name))
    hook = {arc: p for p, arc in entries}.get(install_hook)
    if hook is None or not hook.is_file() or hook.is_symlink():
        raise UsageError(
            f"install hook {install_hook} is not a file in the payload: give its path "
            "relative to the payload directory (for a one-file payload, the file's name)"
        )
    if not hook.stat().st_mode & 0o100:
        raise UsageError(f"install hook {install_hook} is not executable: chmod +x it")
    try:
        with tarfile.open(out, "w", format=tarfile.USTAR_FORMAT) as tar:
            for path, arc in entries:
                _add(tar, path, arc)
    except ValueError as exc:  # ustar limits: 256-character paths, 8 GiB files
        raise UsageError(f"payload does not fit a ustar archive: {exc}") from None


def _check_members(members: list[tarfile.TarInfo]) -> None:
    if len(members) > MAX_ENTRIES:
        raise UnsafeArchive(f"payload has more than {MAX_ENTRIES} entries: refused")
    seen: set[str] = set()
    files: set[str] = set()
    not_dirs: set[str] = set()
    for m in members:
        name = m.name
        shown = repr(name[:200])
        if not name or name.startswith("/") or "\\" in name or "\x00" in name:
            raise UnsafeArchive(f"payload entry {shown} has an absolute or odd path: refused")
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise UnsafeArchive(f"payload entry {shown} has a '..' component: refused")
        norm = "/".join(parts)
        if norm != name.rstrip("/") if m.isdir() else norm != name:
            raise UnsafeArchive(f"payload entry {shown} has '.' or empty components: refused")
        if not norm or norm in seen:
            raise UnsafeArchive(f"payload entry {shown} is empty or a duplicate: refused")
        seen.add(norm)
        if not m.isdir():
            not_dirs.add(norm)
        if m.issym():
            if not _inside(posixpath.dirname(norm), m.linkname):
                raise UnsafeArchive(
                    f"payload symlink {shown} points outside the slot ({m.linkname[:200]!r}): "
                    "refused"
                )
        elif m.islnk():
            target = posixpath.normpath(m.linkname) if m.linkname else ""
            if target not in files:
                raise UnsafeArchive(
                    f"payload hard link {shown} does not point to an earlier file: refused"
                )
        elif m.isreg():
            files.add(norm)
        elif not m.isdir():
            raise UnsafeArchive(
                f"payload entry {shown} is a device, FIFO or other special file: refused"
            )
    for name in seen:  # nothing is written through a file or a symlink of the archive
        parts = name.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent in not_dirs:
                raise UnsafeArchive(
                    f"payload entry {name[:200]!r} lies under {parent[:200]!r}, "
                    "which is not a directory: refused"
                )


def safe_extract(
    tar_path: str | os.PathLike[str], dest: str | os.PathLike[str], *, offset: int = 0
) -> list[str]:
    """Extract the archive at ``offset`` in ``tar_path`` into the directory ``dest``.

    Pass a bundle and its payload offset (:func:`firmware_tools.bundle.read_header`)
    to extract a verified bundle in place. Return the entry names. Raise
    UnsafeArchive, having written nothing, for an entry the module docstring
    refuses; on a refusal the data filter makes mid-way, ``dest`` holds a
    partial tree the caller must remove. I/O failures (disk full, ``dest``
    missing) raise OSError as they are.
    """
    try:
        with open(tar_path, "rb") as f:
            f.seek(offset)
            with tarfile.open(fileobj=f, mode="r:") as tar:
                members = tar.getmembers()
                _check_members(members)
                tar.extractall(dest, members=members, filter="data")
    except tarfile.FilterError as exc:
        raise UnsafeArchive(f"payload entry refused on extraction: {exc}") from None
    except (tarfile.TarError, EOFError, UnicodeError) as exc:
        raise UnsafeArchive(f"payload is not a valid tar archive ({exc}): refused") from None
    return [m.name for m in members]
