"""File modes after ``tsh scp`` without ``-p``: as OpenSSH's ``scp`` leaves them.

asyncssh's copy creates every file 0666 and every directory 0777 less the
umask, so a 0640 file arrived 0644 and a 0700 directory 0755: readable by
others on the far side. OpenSSH's ``scp`` (9.2, sftp-client.c) gives each file
it creates its source's permission bits (a download also keeps the owner's
write bit) less the umask, and leaves a file that already existed as it was. A
directory is made with the owner's write and search bits added while it is
filled, then: an upload's is set to its source's bits exactly (umask not
applied, sticky bit kept; ``upload_dir`` ends with a SETSTAT, even on a
directory that was already there); a download's is set to its source's bits
exactly when that took bits away (``download_dir``: ``chmod`` when
``mode != tmpmode``), else left as made (its bits less the umask; one that
existed keeps its mode). Only ``-p`` adds the times. :class:`ModeFixer` does
that after asyncssh's copy, children before their directory (a 0500 directory
is closed last). Symbolic links have no mode of their own and are left alone.
The local umask stands for the node's (OpenSSH's ``scp`` leaves an upload to
the node's ``sftp-server`` umask, 022 on most systems).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import posixpath
import stat
from dataclasses import dataclass
from typing import Any

#: chmod requests on the node in flight at once (asyncssh's client allows many).
CHMODS_IN_FLIGHT = 64
#: Entries looked at per copied tree, at most (past it, modes stay as asyncssh set them).
MAX_ENTRIES = 100_000


def final_mode(mode: int, is_dir: bool, upload: bool, umask: int, existed: bool) -> int | None:
    """The permission bits OpenSSH's scp leaves on the copy of a file or directory
    whose ``st_mode`` is ``mode``, or None where it leaves the destination as it was
    (see the module's docstring)."""
    if not is_dir:
        if existed:
            return None
        return (mode & 0o777 | (0 if upload else 0o200)) & ~umask
    perm = mode & 0o1777
    if upload:
        return perm
    if perm | 0o300 != perm:  # download_dir: chmod back to what it took away
        return perm
    return None if existed else perm & ~umask


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@dataclass(frozen=True)
class Entry:
    """A regular file or directory of a copied tree."""

    #: path relative to the tree's root ("" for the root itself), "/"-separated
    rel: str
    #: its ``st_mode``
    mode: int
    #: a directory
    is_dir: bool


def local_entries(root: str, limit: int = MAX_ENTRIES) -> list[Entry]:
    """Regular files and directories under ``root`` (itself included), children
    first; symbolic links are not followed. The walk stops after ``limit`` entries
    (the directories it is in still count)."""
    out: list[Entry] = []

    def walk(path: str, rel: str) -> None:
        if len(out) >= limit:
            return
        try:
            st = os.lstat(path)
        except OSError:
            return
        if stat.S_ISDIR(st.st_mode):
            with contextlib.suppress(OSError):
                for name in sorted(os.listdir(path)):
                    walk(os.path.join(path, name), posixpath.join(rel, name) if rel else name)
            out.append(Entry(rel, st.st_mode, True))
        elif stat.S_ISREG(st.st_mode):
            out.append(Entry(rel, st.st_mode, False))

    walk(root, "")
    return out


async def remote_entries(sftp: Any, root: str, limit: int = MAX_ENTRIES) -> list[Entry]:
    """As :func:`local_entries`, on the node over SFTP (one READDIR per directory)."""
    import asyncssh

    out: list[Entry] = []

    async def walk(path: str, rel: str, attrs: Any) -> None:
        if len(out) >= limit:
            return
        if attrs.type == asyncssh.FILEXFER_TYPE_DIRECTORY:
            with contextlib.suppress(asyncssh.SFTPError):
                names = sorted(await sftp.readdir(path), key=lambda n: str(n.filename))
                for name in names:
                    child = str(name.filename)
                    if child in (".", "..") or "/" in child:
                        continue
                    sub = posixpath.join(rel, child) if rel else child
                    await walk(posixpath.join(path, child), sub, name.attrs)
            out.append(Entry(rel, attrs.permissions or 0, True))
        elif attrs.type == asyncssh.FILEXFER_TYPE_REGULAR:
            out.append(Entry(rel, attrs.permissions or 0, False))

    try:
        top = await sftp.lstat(root)
    except asyncssh.SFTPError:
        return out
    await walk(root, "", top)
    return out


class ModeFixer:
    """Around one source's copy: :meth:`before` notes what the destination already
    holds, :meth:`after` sets the modes of what the copy created."""

    def __init__(self, sftp: Any, upload: bool, umask: int | None = None) -> None:
        self.sftp = sftp
        self.upload = upload
        self.umask = current_umask() if umask is None else umask
        self._existing: set[str] = set()

    async def _dest_entries(self, dest: str) -> list[Entry]:
        if self.upload:
            return await remote_entries(self.sftp, dest)
        return local_entries(dest)

    async def before(self, dest: str) -> None:
        """``dest`` is where this source's copy lands (the tree's new root)."""
        self._existing = {e.rel for e in await self._dest_entries(dest)}

    async def after(self, src: str, dest: str) -> None:
        entries = local_entries(src) if self.upload else await remote_entries(self.sftp, src)
        todo = [
            (posixpath.join(dest, e.rel) if e.rel else dest, e.rel.count("/"), e.is_dir, mode)
            for e in entries
            if (mode := final_mode(e.mode, e.is_dir, self.upload, self.umask,
                                   e.rel in self._existing)) is not None
        ]  # fmt: skip
        if not self.upload:
            for path, _, _, mode in todo:
                local = os.path.normpath(path)
                with contextlib.suppress(OSError):
                    if not os.path.islink(local):  # a node's listing never chmods through a link
                        os.chmod(local, mode)
            return
        # On the node each chmod is a round trip: many in flight (a thousand files over a
        # 200 ms link is 3 s, not 200), files first, then directories deepest first.
        files = [(path, mode) for path, _, is_dir, mode in todo if not is_dir]
        await self._remote_chmods(files)
        depths = sorted({depth for _, depth, is_dir, _ in todo if is_dir}, reverse=True)
        for depth in depths:
            await self._remote_chmods(
                [(path, mode) for path, d, is_dir, mode in todo if is_dir and d == depth]
            )

    async def _remote_chmods(self, items: list[tuple[str, int]]) -> None:
        import asyncssh

        async def one(path: str, mode: int) -> None:
            # The copy reported its own failure for anything missing here.
            with contextlib.suppress(asyncssh.SFTPError):
                await self.sftp.chmod(path, mode)

        for start in range(0, len(items), CHMODS_IN_FLIGHT):
            batch = items[start : start + CHMODS_IN_FLIGHT]
            await asyncio.gather(*(one(path, mode) for path, mode in batch))
