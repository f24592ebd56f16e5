"""Provisioning: write the agent's config into a device image, or onto a device over serial.

The file is ``/etc/remoteler/agent.toml`` (mode 0600) with the keys ``edge-agent
start`` reads (:mod:`edge_agent.config`): ``hub``, ``ca-pin``, ``token`` and
optionally ``labels``, ``name`` and ``data-dir``. With it (and the systemd unit
enabled) the device joins on its first boot.

Over a serial console the device's shell writes the file itself: the text goes
as base64 in a here-document, the shell echoes back its sha256 after a marker
that only the shell can produce (``$((...))`` arithmetic), so a terminal echoing
what we type can never fake an answer.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import secrets
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from remoteler.addr import parse_hostport, parse_labels
from remoteler.errors import ConfigError, UsageError
from remoteler.fsutil import write_file_atomic, write_secret_file

CONFIG_PATH = Path("etc/remoteler/agent.toml")
UNIT_NAME = "remoteler-agent.service"
WANTS_DIR = Path("etc/systemd/system/multi-user.target.wants")


class ProvisionError(ConfigError):
    """The device did not take the configuration (serial line, shell, checksum)."""

    code = "provision"


@dataclass(frozen=True)
class AgentSettings:
    hub: str
    ca_pin: str
    token: str
    labels: str = ""
    name: str | None = None
    data_dir: str | None = None

    def check(self) -> None:
        """Raise :class:`UsageError` for a value the agent would refuse at first boot."""
        parse_hostport(self.hub)
        if not re.fullmatch(r"sha256:[0-9a-fA-F]{64}", self.ca_pin):
            raise UsageError("--ca-pin must be sha256: and 64 hex digits; see 'tctl status'")
        if not self.token or any(c.isspace() for c in self.token):
            raise UsageError("--token must be a join token from 'tctl tokens add --type node'")
        parse_labels(self.labels)
        if self.name is not None and not re.fullmatch(r"[^\s\x00-\x1f\x7f]{1,128}", self.name):
            raise UsageError(f"--name {self.name!r}: a node name has no spaces or control bytes")


def toml_string(text: str) -> str:
    """A TOML basic string (every control character escaped)."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def render(settings: AgentSettings) -> str:
    """The agent.toml text for ``settings`` (checked first)."""
    settings.check()
    lines = [
        "# Written by 'firmware-tools provision'. The token is used on the first start only",
        "# (the node's identity is then kept in data-dir); see docs/packaging.md.",
        f"hub = {toml_string(settings.hub)}",
        f"ca-pin = {toml_string(settings.ca_pin)}",
        f"token = {toml_string(settings.token)}",
    ]
    if settings.labels:
        lines.append(f"labels = {toml_string(settings.labels)}")
    if settings.name:
        lines.append(f"name = {toml_string(settings.name)}")
    if settings.data_dir:
        lines.append(f"data-dir = {toml_string(settings.data_dir)}")
    return "\n".join(lines) + "\n"


def _in_image(root: Path, rel: Path) -> Path:
    """``root / rel``, refused if any part of it under ``root`` is a symlink.

    An image's symlinks point into the image once it boots, but here they would
    lead onto the build host (``etc`` -> ``/etc``, a masked unit -> ``/dev/null``).
    """
    path = root
    for part in rel.parts:
        path = path / part
        if path.is_symlink():
            raise UsageError(
                f"{path} is a symlink; provision will not write through it onto this "
                "host: replace it with a real directory or file in the image and retry"
            )
    return path


#: Mode of every directory provisioning creates, whatever the operator's umask.
DIR_MODE = 0o755
#: Mode of the agent's data directory when ``--owner`` creates it.
DATA_DIR_MODE = 0o700
#: The agent's data directory unless ``--data-dir`` names another (edge-agent start's default).
DEFAULT_DATA_DIR = "/var/lib/remoteler-agent"


def _make_dirs(root: Path, rel: Path, mode: int = DIR_MODE) -> list[Path]:
    """Create ``root / rel`` and its missing parents at ``mode`` (umask ignored).

    Returns the directories created, outermost first; existing ones are left as
    they are (they belong to the image).
    """
    made = []
    path = root
    for part in rel.parts:
        path = path / part
        if not path.is_dir():
            path.mkdir()
            os.chmod(path, mode)  # mkdir's mode is masked by the umask; chmod is not
            made.append(path)
    return made


def provision_dir(
    root: Path,
    text: str,
    unit: Path | None = None,
    owner: tuple[int, int] | None = None,
    data_dir: str | None = None,
) -> list[Path]:
    """Write the config (and optionally install + enable ``unit``) under image root ``root``.

    The config is 0600, the directories created 0755 whatever the umask. Every
    path is owned by whoever runs this; ``owner`` (uid, gid: needs root, or
    fakeroot when building an image) chowns only what the agent owns: the
    config, its directory ``etc/remoteler`` and the agent's data directory
    (``data_dir`` in the image, default :data:`DEFAULT_DATA_DIR`; made 0700).
    The unit and its link stay with the caller: systemd, as root, reads them.
    Returns the paths written, then the agent's directories when ``owner`` is given.
    """
    if not root.is_dir():
        raise UsageError(f"--root {root} is not a directory: point it at the image's root")
    conf = _in_image(root, CONFIG_PATH)
    data: Path | None = None
    if owner is not None:
        where = data_dir or DEFAULT_DATA_DIR
        parts = Path(where).parts[1:]
        if not where.startswith("/") or not parts or ".." in parts:
            # It is chowned and chmodded: never the build host's, nor the image's root.
            raise UsageError(
                f"--data-dir {where!r} must be an absolute path on the device, below / "
                "and without '..' (e.g. /var/lib/remoteler-agent)"
            )
        data = _in_image(root, Path(*parts))
    if unit is not None:  # refused before anything is written
        try:
            unit_text = unit.read_bytes()
        except OSError as err:
            raise UsageError(f"cannot read --systemd-unit {unit}: {err.strerror}") from None
        dest = _in_image(root, Path("etc/systemd/system") / UNIT_NAME)
        wants = _in_image(root, WANTS_DIR)
    _make_dirs(root, CONFIG_PATH.parent)
    write_secret_file(conf, text.encode())
    written = [conf]
    if unit is not None:
        _make_dirs(root, dest.parent.relative_to(root))
        write_file_atomic(dest, unit_text, 0o644)  # a new file: replaces, never writes through
        _make_dirs(root, WANTS_DIR)
        link = wants / UNIT_NAME
        link.unlink(missing_ok=True)
        # What 'systemctl enable' creates: an absolute link, valid once the image boots.
        link.symlink_to(Path("/etc/systemd/system") / UNIT_NAME)
        written += [dest, link]
    if owner is None:
        return written
    assert data is not None
    _make_dirs(root, data.relative_to(root))
    os.chmod(data, DATA_DIR_MODE)  # the agent's keys live there
    agent_dirs = [conf.parent, data]
    for path in [conf, *agent_dirs]:
        try:
            os.lchown(path, *owner)
        except PermissionError:
            raise UsageError(
                f"cannot chown {path} to {owner[0]}:{owner[1]}; run as root (or fakeroot)"
            ) from None
    return written + agent_dirs


# -- over a serial console ------------------------------------------------------------


class Port(Protocol):
    """What pyserial's ``Serial`` gives us (and a test double could)."""

    def write(self, data: bytes, /) -> int | None: ...

    def read(self, size: int = 1, /) -> bytes: ...

    @property
    def in_waiting(self) -> int: ...


def probe_command(nonce: str) -> tuple[bytes, bytes]:
    """A command and the answer only a shell running it prints (not a terminal echo)."""
    return f"echo RMTL_$((40+2))_{nonce}_READY\n".encode(), f"RMTL_42_{nonce}_READY".encode()


def write_script(text: str, remote_path: str, nonce: str) -> bytes:
    """Shell commands that write ``text`` to ``remote_path`` (0600) and print its sha256."""
    path = shlex.quote(remote_path)
    tmp = shlex.quote(remote_path + ".tmp")
    folder = shlex.quote(os.path.dirname(remote_path) or ".")
    encoded = base64.encodebytes(text.encode()).decode()
    eof = f"RMTL_EOF_{nonce}"
    return (
        # The heredoc carries the token: keep it out of the shell's history file.
        "HISTFILE=/dev/null\n"
        # A leftover tmp file would keep its mode through '>': remove it first.
        f"mkdir -p {folder} && rm -f {tmp} && (umask 077 && base64 -d > {tmp}) <<'{eof}'\n"
        f"{encoded}{eof}\n"
        f"if chmod 600 {tmp} && mv -f {tmp} {path}; then "
        f"echo RMTL_$((40+2))_{nonce}_SUM $(sha256sum {path} | cut -c1-64); "
        f"else echo RMTL_$((40+2))_{nonce}_FAIL; fi\n"
    ).encode()


def _read_until(port: Port, pattern: re.Pattern[bytes], deadline: float) -> re.Match[bytes] | None:
    buf = b""
    while time.monotonic() < deadline:
        chunk = port.read(max(1, port.in_waiting))
        if chunk:
            buf = (buf + chunk)[-65536:]
            found = pattern.search(buf)
            if found:
                return found
    return None


def wait_for_shell(port: Port, name: str, timeout: float) -> None:
    """Return once a shell answers on ``port``; :class:`ProvisionError` after ``timeout``."""
    nonce = secrets.token_hex(4)
    command, answer = probe_command(nonce)
    deadline = time.monotonic() + timeout
    port.write(b"\n")
    while time.monotonic() < deadline:
        port.write(command)
        if _read_until(port, re.compile(re.escape(answer)), min(deadline, time.monotonic() + 1)):
            return
    raise ProvisionError(
        f"no shell answered on {name} within {timeout:g} s; log in on the console "
        "first, and check --baud"
    )


def provision_serial(port: Port, name: str, text: str, remote_root: str, timeout: float) -> str:
    """Write the config through the shell on ``port``; returns the path written on the device."""
    wait_for_shell(port, name, timeout)
    remote_path = os.path.join(remote_root, str(CONFIG_PATH))
    nonce = secrets.token_hex(4)
    port.write(write_script(text, remote_path, nonce))
    answer = re.compile(rb"RMTL_42_" + nonce.encode() + rb"_(SUM ([0-9a-f]{64})|FAIL)")
    found = _read_until(port, answer, time.monotonic() + timeout)
    if found is None:
        raise ProvisionError(
            f"the device on {name} did not confirm {remote_path} within {timeout:g} s; "
            "check that it has base64 and sha256sum (busybox does) and retry"
        )
    if found.group(2) is None:
        raise ProvisionError(
            f"the device on {name} could not write {remote_path}; "
            "log in as a user who may write it (root)"
        )
    want = hashlib.sha256(text.encode()).hexdigest()
    if found.group(2).decode() != want:
        raise ProvisionError(
            f"{remote_path} on {name} does not match what was sent (sha256); "
            "check the serial line (baud, flow control) and retry"
        )
    return remote_path
