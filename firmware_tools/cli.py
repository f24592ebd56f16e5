"""``firmware-tools``: signing keys, firmware bundles, device provisioning.

Every subcommand sets ``func`` (``argparse.Namespace -> int``) with
``set_defaults``; :func:`main` calls it and turns a RemotelerError into one
line on stderr and its ``exit_code``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from firmware_tools import provision_cli
from remoteler.clihelp import finish
from remoteler.errors import RemotelerError, UsageError

Handler = Callable[[argparse.Namespace], int]


def _targets(text: str) -> dict[str, str]:
    """``k=v[,k=v]`` where a value may hold ``*`` globs."""
    out: dict[str, str] = {}
    for item in text.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep or not key or not value:
            raise argparse.ArgumentTypeError(
                f"bad target {item!r}: use key=value[,key=value], e.g. board=rpi4,arch=arm*"
            )
        out[key] = value
    return out


def _labels(text: str) -> dict[str, str]:
    from remoteler.addr import parse_labels

    try:
        return parse_labels(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_key(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    key = sub.add_parser("key", help="firmware signing keys")
    ksub = key.add_subparsers(dest="key_command", required=True)
    gen = ksub.add_parser("generate", help="make an Ed25519 signing key (offline, 0600)")
    gen.add_argument("-o", "--out", required=True, type=Path, help="private key file to create")
    gen.add_argument("--comment", default="remoteler-firmware-signing")
    gen.set_defaults(func=_key_generate)
    show = ksub.add_parser("id", help="print the key id of a public or private key file")
    show.add_argument("file", type=Path)
    show.set_defaults(func=_key_id)


def _add_bundle(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bundle = sub.add_parser("bundle", help="build, inspect and verify firmware bundles")
    bsub = bundle.add_subparsers(dest="bundle_command", required=True)

    build = bsub.add_parser("build", help="pack and sign a payload")
    build.add_argument("--payload", required=True, type=Path, help="directory or file")
    build.add_argument("--name", required=True)
    build.add_argument("--version", required=True, help="e.g. 1.4.2 or 2.0.0-rc.1")
    build.add_argument(
        "--target",
        required=True,
        action="append",
        type=_targets,
        help="labels a device must have, k=v[,k=v] ('*' globs; repeatable)",
    )
    build.add_argument("--min-agent-version", required=True)
    build.add_argument(
        "--install-hook",
        required=True,
        help="executable in the payload, path relative to it (e.g. install.sh)",
    )
    build.add_argument("--key", required=True, type=Path, help="private signing key file")
    build.add_argument("-o", "--out", required=True, type=Path)
    build.set_defaults(func=_bundle_build)

    inspect = bsub.add_parser("inspect", help="show a bundle's manifest")
    inspect.add_argument("file", type=Path)
    inspect.add_argument(
        "--key", type=Path, help="public key file: also check the signature (default: none)"
    )
    inspect.add_argument("--format", choices=["text", "json"], default="text")
    inspect.set_defaults(func=_bundle_inspect)

    verify = bsub.add_parser("verify", help="check a bundle as a device would")
    verify.add_argument("file", type=Path)
    verify.add_argument("--key", required=True, type=Path, help="trusted public key file(s)")
    verify.add_argument("--labels", type=_labels, default={}, help="device labels k=v,...")
    verify.add_argument(
        "--installed-version", help="version installed on the device (default: none)"
    )
    verify.add_argument(
        "--agent-version", help="edge agent version (default: this package's version)"
    )
    verify.add_argument("--force", action="store_true", help="allow a downgrade or re-install")
    verify.set_defaults(func=_bundle_verify)


EXAMPLES = {
    "key": "firmware-tools key generate -o fw-signing.key",
    "key generate": "firmware-tools key generate -o fw-signing.key",
    "key id": "firmware-tools key id fw-signing.key.pub",
    "bundle": "firmware-tools bundle inspect gw-1.4.2.bundle",
    "bundle build": "firmware-tools bundle build --payload rootfs/ --name gateway-fw "
    "--version 1.4.2 --target board=rpi4 --key fw-signing.key -o gw-1.4.2.bundle",
    "bundle inspect": "firmware-tools bundle inspect gw-1.4.2.bundle --format json",
    "bundle verify": "firmware-tools bundle verify gw-1.4.2.bundle --key fw-signing.key.pub "
    "--labels board=rpi4 --installed-version 1.4.1",
    "provision": "firmware-tools provision --root /mnt/rootfs --hub hub.example.com:3080 "
    "--ca-pin sha256:<pin> --token-stdin --labels env=prod",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="firmware-tools", description="Remoteler firmware tools")
    sub = p.add_subparsers(dest="command", required=True)
    _add_key(sub)
    _add_bundle(sub)
    # -- provisioning: firmware_tools/provision_cli.py (owned by the provisioning
    # feature) registers its subcommand here with one line; its handlers follow
    # the contract above (set_defaults(func=...), return an int, raise RemotelerError):
    #     provision_cli.register(sub)
    provision_cli.register(sub)
    return finish(p, "firmware-tools", EXAMPLES)


# -- handlers ------------------------------------------------------------------------


def _key_generate(args: argparse.Namespace) -> int:
    from firmware_tools.keys import key_id, public_line, write_key_pair

    pub = write_key_pair(args.out, args.comment)
    print(public_line(pub, args.comment))
    print(f"key id {key_id(pub)}; private key {args.out} (0600), public key {args.out}.pub")
    return 0


def _key_id(args: argparse.Namespace) -> int:
    from firmware_tools.keys import key_id, load_signing_key, load_trusted_keys

    try:
        head = args.file.read_bytes()[:64]
    except OSError as exc:
        raise UsageError(f"cannot read {args.file}: {exc.strerror}") from None
    if head.startswith(b"-----BEGIN"):
        print(key_id(load_signing_key(args.file).public_key()))
    else:
        for pub in load_trusted_keys(args.file):
            print(key_id(pub))
    return 0


def _bundle_build(args: argparse.Namespace) -> int:
    from firmware_tools.bundle import build_bundle
    from firmware_tools.keys import load_signing_key

    targets: dict[str, str] = {}
    for t in args.target:
        targets.update(t)
    manifest = build_bundle(
        args.payload,
        args.out,
        name=args.name,
        version=args.version,
        targets=targets,
        min_agent_version=args.min_agent_version,
        install_hook=args.install_hook,
        key=load_signing_key(args.key),
    )
    print(
        f"wrote {args.out}: {manifest.name} {manifest.version}, {manifest.size} payload bytes, "
        f"signed by {manifest.key_id}"
    )
    return 0


def _bundle_inspect(args: argparse.Namespace) -> int:
    from firmware_tools.bundle import BundleError, read_header, verify_file
    from firmware_tools.keys import load_trusted_keys

    manifest, _sig, offset = read_header(args.file)
    status = "not checked (pass --key KEY.pub)"
    code = 0
    if args.key:
        try:
            verify_file(args.file, load_trusted_keys(args.key))
            status = "good"
        except BundleError as exc:  # shown, and the exit status says so (as verify's)
            status = f"BAD: {exc}"
            code = exc.exit_code
    if args.format == "json":
        doc = manifest.to_dict() | {"payload_offset": offset, "signature": status}
        print(json.dumps(doc, indent=2, sort_keys=True))
    else:
        from remoteler.textfmt import fmt_time

        rows = [
            ("name", manifest.name),
            ("version", manifest.version),
            ("targets", ",".join(f"{k}={v}" for k, v in sorted(manifest.targets.items()))),
            ("payload", f"{manifest.size} bytes at offset {offset}, sha256 {manifest.sha256}"),
            ("min agent", manifest.min_agent_version),
            ("install hook", manifest.install_hook),
            ("created", fmt_time(manifest.created)),
            ("key id", manifest.key_id),
            ("signature", status),
        ]
        for k, v in rows:
            print(f"{k + ':':<14}{v}")
    return code


def _bundle_verify(args: argparse.Namespace) -> int:
    from firmware_tools.bundle import verify_bundle
    from firmware_tools.keys import load_trusted_keys

    agent_version = args.agent_version or _own_version()
    manifest = verify_bundle(
        args.file,
        load_trusted_keys(args.key),
        labels=args.labels,
        installed_version=args.installed_version,
        agent_version=agent_version,
        force=args.force,
    )
    print(f"ok: {manifest.name} {manifest.version} signed by {manifest.key_id}")
    return 0


def _own_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("remoteler")
    except PackageNotFoundError:
        return "0"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Handler = args.func
    try:
        return func(args)
    except RemotelerError as err:
        refusal = getattr(err, "refusal", None)
        prefix = f"{refusal}: " if refusal else ""
        print(f"firmware-tools: {prefix}{err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
