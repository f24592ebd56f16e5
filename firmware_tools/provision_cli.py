"""``firmware-tools provision``: the agent's config into an image directory or over serial."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from remoteler.errors import UsageError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "provision",
        help="write the agent's config (hub, CA pin, join token, labels) so a device joins",
        description="Write /etc/remoteler/agent.toml (0600) into an image directory "
        "(--root) or onto a running device through its serial console (--serial).",
    )
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--root",
        type=Path,
        help="the device image's root directory (default: none; --root or --serial)",
    )
    where.add_argument(
        "--serial", metavar="DEVICE", help="serial console, e.g. /dev/ttyUSB0 (default: none)"
    )
    p.add_argument("--hub", required=True, help="hub HOST:PORT")
    p.add_argument("--ca-pin", required=True, help="sha256:... from 'tctl status'")
    token = p.add_mutually_exclusive_group(required=True)
    token.add_argument(
        "--token-file",
        metavar="FILE",
        help="read the join token from FILE, not argv (default: none)",
    )
    token.add_argument(
        "--token-stdin", action="store_true", help="read the token from stdin (not argv)"
    )
    token.add_argument(
        "--token",
        help="join token from 'tctl tokens add --type node' (default: none; visible in ps)",
    )
    p.add_argument("--labels", default="", help="k=v,k2=v2 (labels on the token win)")
    p.add_argument("--name", help="node name (default: the device's host name)")
    p.add_argument("--data-dir", help="the agent's data directory (default: the agent's)")
    p.add_argument(
        "--systemd-unit",
        type=Path,
        help="with --root: install this unit and enable it, multi-user.target.wants link "
        "(default: none)",
    )
    p.add_argument(
        "--owner",
        metavar="UID:GID",
        help="with --root: chown the config, /etc/remoteler and the agent's data dir "
        "(made 0700) to UID:GID; the unit stays the caller's. Needs root/fakeroot "
        "(default: none)",
    )
    p.add_argument("--baud", type=int, default=115200, help="with --serial (default 115200)")
    p.add_argument(
        "--timeout", type=float, default=10.0, help="with --serial: seconds to wait for the shell"
    )
    p.add_argument(
        "--remote-root", default="/", help="with --serial: prefix of the path on the device"
    )
    p.set_defaults(func=run)


def _owner(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    uid, sep, gid = text.partition(":")
    if not (sep and uid.isdigit() and gid.isdigit()):
        raise UsageError(f"--owner {text!r}: use numeric UID:GID, e.g. 0:0")
    return int(uid), int(gid)


def run(args: argparse.Namespace) -> int:
    from edge_agent.jointoken import read_token_file
    from firmware_tools.provision import AgentSettings, provision_dir, provision_serial, render

    if args.token_file:
        token, warning = read_token_file(Path(args.token_file))
        if warning:
            print(warning.replace("edge-agent:", "firmware-tools:", 1), file=sys.stderr)
    elif args.token_stdin:
        token = sys.stdin.readline().strip()
    else:
        token = args.token
        print(
            "firmware-tools: warning: --token is visible to other users in the process list "
            "(ps); use --token-file FILE or --token-stdin",
            file=sys.stderr,
        )
    text = render(
        AgentSettings(
            hub=args.hub,
            ca_pin=args.ca_pin,
            token=token,
            labels=args.labels,
            name=args.name,
            data_dir=args.data_dir,
        )
    )
    if args.root is not None:
        for path in provision_dir(
            args.root, text, args.systemd_unit, _owner(args.owner), args.data_dir
        ):
            print(f"wrote {path}")
        return 0
    if args.systemd_unit or args.owner:
        raise UsageError("--systemd-unit and --owner go with --root; on a device use systemctl")
    # pyserial: only the serial path needs it (imported by name: typed as Any here)
    serial = importlib.import_module("serial")
    try:
        # pyserial puts a POSIX tty in raw mode (no echo, no line editing) itself.
        port = serial.Serial(args.serial, args.baud, timeout=0.2, exclusive=True)
    except (serial.SerialException, OSError) as err:
        raise UsageError(f"cannot open {args.serial}: {err}; check the device and --baud") from None
    with port:
        remote = provision_serial(port, args.serial, text, args.remote_root, args.timeout)
    print(f"wrote {remote} on the device at {args.serial} (sha256 checked)")
    return 0
