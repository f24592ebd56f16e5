"""A real OpenSSH ``sshd`` set up as a legacy device's own SSH server, for tests.

``legacy_sshd`` starts ``/usr/sbin/sshd -D -e`` on ``127.0.0.1:<free port>``,
configured the way docs/legacy-devices.md tells a device owner to:

- ``HostKey`` (a fresh Ed25519 key) + ``HostCertificate`` signed by the cluster's
  host CA with ``tctl auth sign --host NAME --pubkey ...`` (principals ``NAME`` and
  ``NAME.<cluster>``, so both ``tsh ssh`` and OpenSSH through ``tsh config`` verify it);
- ``TrustedUserCAKeys``: the verbatim output of ``tctl auth export --type user``;
- no ``AuthorizedPrincipalsFile`` unless ``principals`` is given: sshd then accepts
  a user certificate only if the login is among its principals (sshd's default);
- ``PasswordAuthentication no``, ``UsePAM no``, ``StrictModes no``, a ``PidFile``
  in the test's directory; logs (``LogLevel VERBOSE``) go to ``sshd.log``.

Usage (the cluster's hub data dir must exist, i.e. ``cluster.start_hub()`` ran)::

    from sshdkit import legacy_sshd

    with legacy_sshd(cluster, tmp_path, name="legacy-1") as sshd:
        cluster.start_agent("legacy-1", "", None, "--ssh-target", sshd.target)
        ...  # sshd.port, sshd.pid, sshd.log_text()

The server is stopped by its process id when the block ends. sshd runs as the
current user (root here), which is the only login it can serve.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helpers import Cluster, free_port, stop_process
from require import require_binaries

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


@dataclass
class LegacySshd:
    name: str
    port: int
    pid: int
    dir: Path
    host_cert: Path
    user_ca: Path
    log: Path
    proc: subprocess.Popen[Any]

    @property
    def target(self) -> str:
        """The agent's ``--ssh-target`` value."""
        return f"127.0.0.1:{self.port}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def _wait_banner(port: int, proc: subprocess.Popen[Any], log: Path, timeout: float = 10) -> None:
    """Wait until sshd answers with its SSH-2.0 banner (RFC 4253 §4.2)."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited ({proc.returncode}): {log.read_text()[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1) as s:
            s.settimeout(2)
            if s.recv(64).startswith(b"SSH-2.0-"):
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"sshd did not answer on port {port}: {log.read_text()[-2000:]}")
        time.sleep(0.05)


@contextlib.contextmanager
def legacy_sshd(
    cluster: Cluster,
    tmp_path: Path,
    name: str = "legacy-1",
    principals: Sequence[str] | None = None,
    extra_config: str = "",
) -> Iterator[LegacySshd]:
    """Start sshd for node ``name``; yield its :class:`LegacySshd`; stop it by pid.

    ``principals``: if given, an ``AuthorizedPrincipalsFile`` listing them replaces
    the default (login must be a principal). ``extra_config``: more sshd_config lines.
    Fails the test with a one-line hint if sshd or ssh-keygen is not installed.
    """
    require_binaries("sshd", "ssh-keygen")
    d = tmp_path / f"sshd-{name}"
    d.mkdir(parents=True, exist_ok=True)
    key = d / "ssh_host_ed25519_key"
    if not key.exists():
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)],
            check=True,
        )
    host_cert = d / "ssh_host_ed25519_key-cert.pub"
    cluster.tctl("auth", "sign", "--host", name, "--pubkey", f"{key}.pub", "-o", str(host_cert))
    user_ca = d / "trusted_user_ca_keys.pub"
    user_ca.write_text(cluster.tctl("auth", "export", "--type", "user").stdout)
    port = free_port()
    lines = [
        f"Port {port}",
        "ListenAddress 127.0.0.1",
        f"HostKey {key}",
        f"HostCertificate {host_cert}",
        f"TrustedUserCAKeys {user_ca}",
        "PubkeyAuthentication yes",
        "AuthorizedKeysFile none",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        "StrictModes no",
        "PermitRootLogin prohibit-password",
        f"PidFile {d / 'sshd.pid'}",
        "LogLevel VERBOSE",
    ]
    if principals is not None:
        (d / "principals").write_text("".join(f"{p}\n" for p in principals))
        lines.append(f"AuthorizedPrincipalsFile {d / 'principals'}")
    config = d / "sshd_config"
    config.write_text("\n".join(lines) + "\n" + extra_config)
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
    log = d / "sshd.log"
    with open(log, "ab") as stderr:  # the child has its own copy; ours closes here
        proc = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    cluster.logs.append(log)
    try:
        _wait_banner(port, proc, log)
        yield LegacySshd(name, port, proc.pid, d, host_cert, user_ca, log, proc)
    finally:
        stop_process(proc)
