"""Signed firmware bundles: one file a device can verify without trusting the transport.

Layout (all integers big-endian; details and rationale in docs/firmware.md)::

    offset      size  field
    0           6     magic b"RMLFWB"
    6           1     format version, 1
    7           1     reserved, 0
    8           4     N, manifest length (2..16384)
    12          N     manifest: canonical JSON (:meth:`Manifest.to_bytes`)
    12+N        64    Ed25519 signature over SIGNING_CONTEXT + bytes [0, 12+N)
    76+N        size  payload: a ustar tar archive, ``size`` and ``sha256`` in the manifest

The signature covers the manifest, which covers the payload's length and hash,
so the payload can be streamed (and a resumed transfer re-hashes its prefix)
after the header alone was checked. Nothing from the file is trusted before
the signature checks out: the manifest length is capped before any read, and
the manifest is parsed only to word the refusal when no trusted key verifies it.

Check order in :func:`verify_bundle`: signature, payload, then the device's
policy (:func:`check_manifest`: target labels, agent version, version order).
A receiver that streams calls :func:`verify_header` (signature and policy, so
it can refuse before the download), then feeds a :class:`PayloadVerifier`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from firmware_tools.errors import (
    AgentTooOld,
    AlreadyInstalled,
    BundleError,
    BundleTampered,
    DowngradeRefused,
    TargetMismatch,
    UnsafeArchive,
    UntrustedSigner,
)
from firmware_tools.keys import generate_key, key_id, load_public_key, load_signing_key
from firmware_tools.manifest import MAX_MANIFEST, Manifest
from firmware_tools.versions import compare_versions
from remoteler.access import PatternError, compile_pattern
from remoteler.errors import ConfigError, UsageError

__all__ = [
    "AgentTooOld",
    "AlreadyInstalled",
    "BundleError",
    "BundleTampered",
    "DowngradeRefused",
    "Manifest",
    "PayloadVerifier",
    "RawHeader",
    "TargetMismatch",
    "UnsafeArchive",
    "UntrustedSigner",
    "build_bundle",
    "check_manifest",
    "compare_versions",
    "generate_key",
    "header_size",
    "key_id",
    "load_public_key",
    "load_signing_key",
    "read_header",
    "split_header",
    "verify_bundle",
    "verify_file",
    "verify_header",
    "verify_signature",
]

MAGIC = b"RMLFWB"
FORMAT_VERSION = 1
FIXED_HEADER = 12
SIGNATURE_SIZE = 64
#: Domain separation: a signature over a bundle header is good for nothing else.
SIGNING_CONTEXT = b"remoteler firmware bundle v1\x00"
CHUNK = 1 << 20

# -- header -------------------------------------------------------------------------


@dataclass(frozen=True)
class RawHeader:
    """A bundle header as bytes, before anything in it is trusted."""

    signed: bytes
    """Bytes ``[0, 12+N)``: fixed header and manifest, what the signature covers."""
    signature: bytes
    """The 64-byte Ed25519 signature."""

    @property
    def manifest_bytes(self) -> bytes:
        return self.signed[FIXED_HEADER:]

    @property
    def payload_offset(self) -> int:
        return len(self.signed) + SIGNATURE_SIZE


def header_size(prefix: bytes) -> int | None:
    """Length of the whole header (up to the payload), or None until 12 bytes are known.

    Raise BundleTampered when the prefix is not a bundle this version reads.
    """
    if len(prefix) < FIXED_HEADER:
        if not MAGIC.startswith(prefix[: len(MAGIC)]):
            raise BundleTampered("not a firmware bundle (bad magic): check the file name")
        return None
    if prefix[:6] != MAGIC:
        raise BundleTampered("not a firmware bundle (bad magic): check the file name")
    if prefix[6] != FORMAT_VERSION or prefix[7] != 0:
        raise BundleTampered(
            f"bundle format {prefix[6]} is not supported (this tool reads {FORMAT_VERSION}): "
            "upgrade firmware-tools or rebuild the bundle"
        )
    (n,) = struct.unpack(">I", prefix[8:12])
    if not 2 <= n <= MAX_MANIFEST:
        raise BundleTampered(
            f"bundle manifest length {n} is out of range: the file is damaged, get it again"
        )
    return FIXED_HEADER + int(n) + SIGNATURE_SIZE


def split_header(data: bytes) -> RawHeader:
    """Cut the header from the first bytes of a bundle (at least :func:`header_size`)."""
    size = header_size(data[:FIXED_HEADER])
    if size is None or len(data) < size:
        raise BundleTampered("bundle is truncated inside its header: get the bundle again")
    end = size - SIGNATURE_SIZE
    return RawHeader(signed=bytes(data[:end]), signature=bytes(data[end:size]))


def _read_exact(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise BundleTampered("bundle is truncated inside its header: get the bundle again")
    return data


def _read_raw(f: BinaryIO) -> RawHeader:
    fixed = _read_exact(f, FIXED_HEADER)
    size = header_size(fixed)
    assert size is not None
    return split_header(fixed + _read_exact(f, size - FIXED_HEADER))


def _open(path: str | os.PathLike[str]) -> BinaryIO:
    try:
        return open(path, "rb")  # the caller closes it
    except OSError as exc:
        raise BundleError(f"cannot read bundle {path}: {exc.strerror}") from None


def read_header(path: str | os.PathLike[str]) -> tuple[Manifest, bytes, int]:
    """(manifest, signature, payload offset), without checking the signature or payload.

    For display (``bundle inspect``) only: nothing returned is verified.
    """
    with _open(path) as f:
        raw = _read_raw(f)
    return Manifest.from_bytes(raw.manifest_bytes), raw.signature, raw.payload_offset


# -- verification ---------------------------------------------------------------------


def _signature_ok(pub: Ed25519PublicKey, raw: RawHeader) -> bool:
    try:
        pub.verify(raw.signature, SIGNING_CONTEXT + raw.signed)
    except InvalidSignature:
        return False
    return True


def verify_signature(raw: RawHeader, trusted: Sequence[Ed25519PublicKey]) -> Manifest:
    """The manifest, once one of ``trusted`` verifies the signature.

    Raise UntrustedSigner when the bundle names a signer not among ``trusted``,
    BundleTampered when it names a trusted one whose signature does not verify.
    """
    if not trusted:
        raise UntrustedSigner(
            "no trusted firmware signing key: pass the signer's public key (--key KEY.pub)"
        )
    signer = next((k for k in trusted if _signature_ok(k, raw)), None)
    if signer is not None:
        manifest = Manifest.from_bytes(raw.manifest_bytes)
        if manifest.key_id != key_id(signer):
            raise BundleTampered(
                f"bundle manifest names key {manifest.key_id} but was signed by "
                f"{key_id(signer)}: rebuild the bundle with firmware-tools"
            )
        return manifest
    try:  # unverified, only to word the refusal; the key id format is checked
        claimed: str | None = Manifest.from_bytes(raw.manifest_bytes).key_id
    except BundleTampered:
        claimed = None
    ids = sorted(key_id(k) for k in trusted)
    if claimed is None or claimed in ids:
        raise BundleTampered(
            "bundle signature does not match its manifest (changed after signing): "
            "get the bundle again from its source"
        )
    raise UntrustedSigner(
        f"bundle is signed by {claimed}, which is not a trusted firmware key "
        f"(trusted: {', '.join(ids)}): verify with the signer's public key or rebuild "
        "the bundle with a trusted key"
    )


def _show(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "(none)"


def check_manifest(
    manifest: Manifest,
    *,
    labels: Mapping[str, str],
    installed_version: str | None,
    agent_version: str,
    force: bool = False,
) -> None:
    """Refuse a verified manifest this device must not install.

    Every target label must be present with a matching value (``*`` globs,
    :func:`remoteler.access.compile_pattern`). ``force`` allows a downgrade or a
    re-install of the installed version; it never overrides the targets or
    the agent version.
    """
    for key, pattern in sorted(manifest.targets.items()):
        value = labels.get(key)
        try:
            ok = value is not None and compile_pattern(pattern)(value)
        except PatternError:
            ok = False
        if not ok:
            have = f"{key}={value}" if value is not None else f"no {key!r} label"
            raise TargetMismatch(
                f"bundle {manifest.name} {manifest.version} targets {_show(manifest.targets)} "
                f"but this device has {have}: install a bundle built for this device"
            )
    try:
        too_old = compare_versions(manifest.min_agent_version, agent_version) > 0
    except ValueError:
        too_old = True
    if too_old:
        raise AgentTooOld(
            f"bundle {manifest.name} {manifest.version} needs edge agent "
            f"{manifest.min_agent_version} or newer, this agent is {agent_version[:64]}: "
            "upgrade the edge agent first"
        )
    if installed_version is None or force:
        return
    try:
        order = compare_versions(manifest.version, installed_version)
    except ValueError:
        raise DowngradeRefused(
            f"installed version {installed_version[:64]!r} cannot be compared with "
            f"{manifest.version}: pass --force to install anyway"
        ) from None
    if order < 0:
        raise DowngradeRefused(
            f"bundle {manifest.name} {manifest.version} is older than the installed "
            f"{installed_version}: pass --force to downgrade on purpose"
        )
    if order == 0:
        raise AlreadyInstalled(
            f"{manifest.name} {manifest.version} is already installed: "
            "pass --force to install it again"
        )


def verify_header(
    data: bytes,
    trusted: Sequence[Ed25519PublicKey],
    *,
    labels: Mapping[str, str],
    installed_version: str | None,
    agent_version: str,
    force: bool = False,
) -> Manifest:
    """Signature and device policy from the header bytes alone (before the payload)."""
    manifest = verify_signature(split_header(data), trusted)
    check_manifest(
        manifest,
        labels=labels,
        installed_version=installed_version,
        agent_version=agent_version,
        force=force,
    )
    return manifest


@dataclass
class PayloadVerifier:
    """Checks a payload received in chunks against a verified manifest (no I/O).

    ``feed`` each chunk in order, then ``finish``. To resume a transfer, feed
    the bytes already on disk first.
    """

    manifest: Manifest
    received: int = 0
    _hash: Any = field(default_factory=hashlib.sha256, repr=False)

    def feed(self, chunk: bytes) -> None:
        """Raise BundleTampered as soon as more than ``manifest.size`` bytes arrived."""
        self.received += len(chunk)
        if self.received > self.manifest.size:
            raise BundleTampered(
                f"bundle payload is longer than the {self.manifest.size} bytes its manifest "
                "states: get the bundle again"
            )
        self._hash.update(chunk)

    def finish(self) -> None:
        """Raise BundleTampered unless exactly the signed bytes arrived."""
        if self.received != self.manifest.size:
            raise BundleTampered(
                f"bundle payload is truncated ({self.received} of {self.manifest.size} "
                "bytes): get the bundle again"
            )
        if self._hash.hexdigest() != self.manifest.sha256:
            raise BundleTampered(
                "bundle payload does not match its signed hash (changed after signing): "
                "get the bundle again from its source"
            )


def verify_file(path: str | os.PathLike[str], trusted: Sequence[Ed25519PublicKey]) -> Manifest:
    """Signature and payload of the bundle at ``path``, without the device's policy."""
    with _open(path) as f:
        manifest = verify_signature(_read_raw(f), trusted)
        checker = PayloadVerifier(manifest)
        while chunk := f.read(min(CHUNK, manifest.size - checker.received + 1)):
            checker.feed(chunk)
        checker.finish()
    return manifest


def verify_bundle(
    path: str | os.PathLike[str],
    trusted: Sequence[Ed25519PublicKey],
    *,
    labels: Mapping[str, str],
    installed_version: str | None,
    agent_version: str,
    force: bool = False,
) -> Manifest:
    """The bundle's manifest if ``path`` may be installed here; raise a BundleError if not.

    Order: signature, payload (length and hash), then :func:`check_manifest`.
    """
    manifest = verify_file(path, trusted)
    check_manifest(
        manifest,
        labels=labels,
        installed_version=installed_version,
        agent_version=agent_version,
        force=force,
    )
    return manifest


# -- building -------------------------------------------------------------------------


def encode_header(manifest: Manifest, key: Ed25519PrivateKey) -> bytes:
    """Fixed header, manifest and signature: everything that precedes the payload."""
    body = manifest.to_bytes()
    if len(body) > MAX_MANIFEST:
        raise UsageError(f"manifest is over {MAX_MANIFEST} bytes: use fewer or shorter targets")
    signed = MAGIC + bytes([FORMAT_VERSION, 0]) + struct.pack(">I", len(body)) + body
    return signed + key.sign(SIGNING_CONTEXT + signed)


def build_bundle(
    payload: Path,
    out: Path,
    *,
    name: str,
    version: str,
    targets: Mapping[str, str],
    min_agent_version: str,
    install_hook: str,
    key: Ed25519PrivateKey,
) -> Manifest:
    """Pack ``payload`` (a directory or one file) as a tar, sign, and write ``out``.

    ``install_hook`` must name an executable regular file in the payload.
    Raise UsageError naming the bad argument. ``out`` appears whole or not at all.
    """
    from firmware_tools.archive import pack_payload  # tarfile is not needed to verify

    def manifest(size: int, sha256: str) -> Manifest:
        try:
            return Manifest(
                name=name,
                version=version,
                targets=dict(targets),
                size=size,
                sha256=sha256,
                min_agent_version=min_agent_version,
                install_hook=install_hook,
                created=round(time.time(), 3),
                key_id=key_id(key.public_key()),
            )
        except ValueError as exc:
            raise UsageError(str(exc)) from None

    manifest(0, "0" * 64)  # refuse bad arguments before packing a large payload
    out = Path(out)
    try:
        with tempfile.TemporaryDirectory(dir=out.parent, prefix=".fwbuild-") as tmp:
            tar_path = Path(tmp) / "payload.tar"
            pack_payload(Path(payload), tar_path, install_hook=install_hook)
            digest = hashlib.sha256()
            with tar_path.open("rb") as f:
                while chunk := f.read(CHUNK):
                    digest.update(chunk)
            signed = manifest(tar_path.stat().st_size, digest.hexdigest())
            part = Path(tmp) / "bundle"
            with part.open("wb") as dst, tar_path.open("rb") as src:
                dst.write(encode_header(signed, key))
                shutil.copyfileobj(src, dst, CHUNK)
            os.replace(part, out)
    except OSError as exc:
        raise ConfigError(
            f"cannot build {out}: {exc.strerror or exc} ({exc.filename or out}): "
            "check the paths and permissions"
        ) from None
    return signed
