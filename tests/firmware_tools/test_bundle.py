"""Bundle signing, verification and every refusal, on real files."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import struct
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware_tools.bundle import (
    MAGIC,
    AgentTooOld,
    AlreadyInstalled,
    BundleError,
    BundleTampered,
    DowngradeRefused,
    Manifest,
    PayloadVerifier,
    TargetMismatch,
    UntrustedSigner,
    build_bundle,
    encode_header,
    header_size,
    key_id,
    read_header,
    verify_bundle,
    verify_header,
)
from remoteler.errors import ConfigError, UsageError

KEY = Ed25519PrivateKey.generate()
OTHER = Ed25519PrivateKey.generate()
DEVICE = {"board": "rpi4", "site": "berlin"}


def make_payload(root: Path) -> Path:
    payload = root / "payload"
    (payload / "bin").mkdir(parents=True)
    hook = payload / "install.sh"
    hook.write_text("#!/bin/sh\nexit 0\n")
    hook.chmod(0o755)
    (payload / "bin" / "image").write_bytes(os.urandom(5000))
    return payload


def build(root: Path, **over: object) -> tuple[Path, Manifest]:
    args: dict[str, object] = {
        "name": "gateway-fw",
        "version": "1.2.0",
        "targets": {"board": "rpi4"},
        "min_agent_version": "0.1",
        "install_hook": "install.sh",
        "key": KEY,
    }
    args.update(over)
    out = root / "fw.bundle"
    manifest = build_bundle(make_payload(root), out, **args)  # type: ignore[arg-type]
    return out, manifest


def verify(path: Path, **over: object) -> Manifest:
    args: dict[str, object] = {
        "labels": DEVICE,
        "installed_version": "1.1.9",
        "agent_version": "0.1.0",
    }
    args.update(over)
    trusted = args.pop("trusted", [KEY.public_key()])
    return verify_bundle(path, trusted, **args)  # type: ignore[arg-type]


@pytest.fixture
def bundle(tmp_path: Path) -> tuple[Path, Manifest]:
    return build(tmp_path)


def test_round_trip(bundle: tuple[Path, Manifest]) -> None:
    path, built = bundle
    assert verify(path) == built
    manifest, signature, offset = read_header(path)
    assert manifest == built
    assert len(signature) == 64
    assert path.stat().st_size == offset + built.size
    assert built.key_id == key_id(KEY.public_key())
    assert Manifest.from_bytes(built.to_bytes()) == built
    assert verify(path, installed_version=None) == built


def test_header_alone_verifies_before_the_payload(bundle: tuple[Path, Manifest]) -> None:
    path, built = bundle
    data = path.read_bytes()
    assert header_size(data[:5]) is None
    size = header_size(data[:12])
    assert size is not None
    manifest = verify_header(
        data[:size], [KEY.public_key()], labels=DEVICE, installed_version=None, agent_version="1"
    )
    assert manifest == built
    with pytest.raises(BundleTampered, match="truncated"):
        verify_header(
            data[: size - 1], [KEY.public_key()], labels=DEVICE, installed_version=None,
            agent_version="1",
        )  # fmt: skip


def flip(path: Path, pos: int) -> None:
    data = bytearray(path.read_bytes())
    data[pos] ^= 0x01
    path.write_bytes(bytes(data))


def test_payload_byte_flipped(bundle: tuple[Path, Manifest]) -> None:
    path, built = bundle
    _, _, offset = read_header(path)
    for pos in (offset, offset + built.size // 2, offset + built.size - 1):
        flip(path, pos)
        with pytest.raises(BundleTampered, match="does not match its signed hash"):
            verify(path)
        flip(path, pos)
    verify(path)


def test_every_header_byte_flipped_is_refused(bundle: tuple[Path, Manifest]) -> None:
    path, _ = bundle
    _, _, offset = read_header(path)
    header = path.read_bytes()[:offset]
    outcomes = set()
    for pos in range(offset):  # fixed header, manifest and signature
        data = bytearray(header)
        data[pos] ^= 0x01
        with pytest.raises((BundleTampered, UntrustedSigner)) as err:
            verify_header(
                bytes(data), [KEY.public_key()], labels=DEVICE, installed_version=None,
                agent_version="1",
            )  # fmt: skip
        outcomes.add(type(err.value))
    assert outcomes == {BundleTampered, UntrustedSigner}  # a flip in key_id names another key
    flip(path, 20)
    with pytest.raises(BundleTampered):
        verify(path)


def test_manifest_value_changed_is_tampering(bundle: tuple[Path, Manifest]) -> None:
    path, _ = bundle
    data = path.read_bytes()
    assert data.count(b'"version":"1.2.0"') == 1
    path.write_bytes(data.replace(b'"version":"1.2.0"', b'"version":"9.2.0"'))
    with pytest.raises(BundleTampered, match="changed after signing"):
        verify(path)
    manifest, _, _ = read_header(path)  # inspect still shows what it claims
    assert manifest.version == "9.2.0"


def test_signature_byte_flipped(bundle: tuple[Path, Manifest]) -> None:
    path, _ = bundle
    _, _, offset = read_header(path)
    flip(path, offset - 1)
    with pytest.raises(BundleTampered, match="signature does not match"):
        verify(path)


def test_truncated_or_extended(bundle: tuple[Path, Manifest]) -> None:
    path, _built = bundle
    data = path.read_bytes()
    _, _, offset = read_header(path)
    for length in (0, 3, 11, 12, 40, offset - 1, offset, offset + 100, len(data) - 1):
        path.write_bytes(data[:length])
        with pytest.raises(BundleTampered):
            verify(path)
    path.write_bytes(data + b"\0")
    with pytest.raises(BundleTampered, match="longer than"):
        verify(path)


def test_wrong_key(bundle: tuple[Path, Manifest]) -> None:
    path, built = bundle
    with pytest.raises(UntrustedSigner, match=built.key_id.replace("+", r"\+")) as err:
        verify(path, trusted=[OTHER.public_key()])
    assert key_id(OTHER.public_key()) in str(err.value)
    with pytest.raises(UntrustedSigner, match="no trusted"):
        verify(path, trusted=[])
    assert verify(path, trusted=[OTHER.public_key(), KEY.public_key()]) == built


def test_manifest_naming_another_key_is_refused(bundle: tuple[Path, Manifest]) -> None:
    path, built = bundle
    _, _, offset = read_header(path)
    lying = dataclasses.replace(built, key_id=key_id(OTHER.public_key()))
    path.write_bytes(encode_header(lying, KEY) + path.read_bytes()[offset:])
    with pytest.raises(BundleTampered, match="names key"):
        verify(path)


def test_downgrade_refused_unless_forced(bundle: tuple[Path, Manifest]) -> None:
    path, built = bundle
    with pytest.raises(DowngradeRefused, match=r"older than the installed 1\.10") as err:
        verify(path, installed_version="1.10")
    assert not isinstance(err.value, AlreadyInstalled)
    assert verify(path, installed_version="1.10", force=True) == built
    with pytest.raises(AlreadyInstalled, match="already installed"):
        verify(path, installed_version="1.2")  # 1.2 == 1.2.0
    assert verify(path, installed_version="1.2.0", force=True) == built
    assert verify(path, installed_version="1.2.0-rc.3") == built
    with pytest.raises(DowngradeRefused, match="cannot be compared"):
        verify(path, installed_version="v1-custom")


def test_target_mismatch(tmp_path: Path) -> None:
    path, built = build(tmp_path, targets={"board": "rpi*", "site": "berlin"})
    assert verify(path) == built
    with pytest.raises(TargetMismatch, match="this device has board=jetson"):
        verify(path, labels={"board": "jetson", "site": "berlin"})
    with pytest.raises(TargetMismatch, match="no 'site' label"):
        verify(path, labels={"board": "rpi4"})
    with pytest.raises(TargetMismatch):  # force is for versions only
        verify(path, labels={}, force=True)


def test_agent_too_old(tmp_path: Path) -> None:
    path, built = build(tmp_path, min_agent_version="0.3")
    with pytest.raises(AgentTooOld, match=r"needs edge agent 0.3 or newer, this agent is 0.2.9"):
        verify(path, agent_version="0.2.9")
    with pytest.raises(AgentTooOld):
        verify(path, agent_version="0.3.0-rc.1", force=True)
    assert verify(path, agent_version="0.3") == built


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"version": "1.02"}, "bad version"),
        ({"name": "../x"}, "bad name"),
        ({"targets": {}}, "target labels"),
        ({"targets": {"board": "^rpi.*$"}}, "bad target"),
        ({"install_hook": "../install.sh"}, "bad install hook"),
        ({"install_hook": "/usr/bin/install"}, "bad install hook"),
        ({"install_hook": "bin/image"}, "not executable"),
        ({"install_hook": "missing.sh"}, "not a file in the payload"),
    ],
)
def test_build_refuses_bad_arguments(tmp_path: Path, over: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        build(tmp_path, **over)
    assert not (tmp_path / "fw.bundle").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["payload"]  # no temporary left


def test_build_into_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot build"):
        build_bundle(
            make_payload(tmp_path),
            tmp_path / "missing" / "fw.bundle",
            name="x",
            version="1",
            targets={"a": "b"},
            min_agent_version="0",
            install_hook="install.sh",
            key=KEY,
        )


def test_single_file_payload(tmp_path: Path) -> None:
    exe = tmp_path / "selfinstall.run"
    exe.write_bytes(b"#!/bin/sh\n" + os.urandom(100))
    exe.chmod(0o700)
    out = tmp_path / "one.bundle"
    built = build_bundle(
        exe,
        out,
        name="x",
        version="1",
        targets={"board": "*"},
        min_agent_version="0",
        install_hook="selfinstall.run",
        key=KEY,
    )
    assert verify(out, installed_version=None) == built


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, Manifest, int]:
    path, manifest = build(tmp_path_factory.mktemp("shared"))
    return path.read_bytes(), manifest, read_header(path)[2]


def whole_file_accepts(tmp: Path, data: bytes) -> bool:
    path = tmp / "whole.bundle"
    path.write_bytes(data)
    try:
        verify(path)
    except BundleTampered:
        return False
    return True


def chunked_accepts(manifest: Manifest, payload: bytes, cuts: list[int]) -> bool:
    bounds = [0, *sorted(cuts), len(payload)]
    checker = PayloadVerifier(manifest)
    try:
        for a, b in itertools.pairwise(bounds):
            checker.feed(payload[a:b])
        checker.finish()
    except BundleTampered:
        return False
    return True


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_payload_verifier_in_random_chunks_equals_whole_file(
    tmp_path_factory: pytest.TempPathFactory,
    shared: tuple[bytes, Manifest, int],
    data: st.DataObject,
) -> None:
    bundle, manifest, offset = shared
    payload = bundle[offset:]
    change = data.draw(st.sampled_from(["none", "flip", "truncate", "extend"]), label="change")
    if change == "flip":
        pos = data.draw(st.integers(0, len(payload) - 1))
        payload = payload[:pos] + bytes([payload[pos] ^ 0x80]) + payload[pos + 1 :]
    elif change == "truncate":
        payload = payload[: data.draw(st.integers(0, len(payload) - 1))]
    elif change == "extend":
        payload += data.draw(st.binary(min_size=1, max_size=100))
    cuts = data.draw(st.lists(st.integers(0, len(payload)), max_size=30))
    chunked = chunked_accepts(manifest, payload, cuts)
    assert chunked == whole_file_accepts(tmp_path_factory.mktemp("v"), bundle[:offset] + payload)
    assert chunked == (change == "none")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_read_header_random_bytes(tmp_path_factory: pytest.TempPathFactory, blob: bytes) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "b"
    for data in (
        blob,
        MAGIC + b"\x01\x00" + blob,
        MAGIC + b"\x01\x00" + struct.pack(">I", len(blob)) + blob,
    ):
        path.write_bytes(data)
        with contextlib.suppress(BundleError):
            read_header(path)
