"""Why a firmware bundle is refused.

Error tree (each ``str(err)`` is one line saying what to do next)::

    RemotelerError
    └── BundleError                 base of every refusal below   (exit 1)
        ├── BundleTampered          bytes changed after signing, truncated, bad format (10)
        ├── UntrustedSigner         signed by a key this device does not trust    (11)
        ├── DowngradeRefused        older than the installed version, no --force  (12)
        │   └── AlreadyInstalled    same version as installed, no --force         (13)
        ├── TargetMismatch          the device's labels are not the bundle's targets (14)
        ├── AgentTooOld             the agent is older than min_agent_version     (15)
        └── UnsafeArchive           a payload entry would land outside the slot   (16)

``exit_code`` is what ``firmware-tools bundle verify`` exits with; ``code`` is a
stable name to send to a peer (the roll-out reports it to the hub); ``refusal``
names the refusal for a person (the CLI prints it before the message).
"""

from __future__ import annotations

from remoteler.errors import RemotelerError


class BundleError(RemotelerError):
    code = "bundle"
    exit_code = 1
    refusal = "refused"


class BundleTampered(BundleError):
    code = "bundle_tampered"
    exit_code = 10
    refusal = "tampered bundle"


class UntrustedSigner(BundleError):
    code = "bundle_untrusted_signer"
    exit_code = 11
    refusal = "untrusted signer"


class DowngradeRefused(BundleError):
    code = "bundle_downgrade"
    exit_code = 12
    refusal = "downgrade refused"


class AlreadyInstalled(DowngradeRefused):
    """The bundle's version equals the installed one: nothing to do unless forced."""

    code = "bundle_already_installed"
    exit_code = 13
    refusal = "already installed"


class TargetMismatch(BundleError):
    code = "bundle_target_mismatch"
    exit_code = 14
    refusal = "target mismatch"


class AgentTooOld(BundleError):
    code = "bundle_agent_too_old"
    exit_code = 15
    refusal = "agent too old"


class UnsafeArchive(BundleError):
    code = "bundle_unsafe_archive"
    exit_code = 16
    refusal = "unsafe payload"


BUNDLE_ERRORS: tuple[type[BundleError], ...] = (
    BundleError,
    BundleTampered,
    UntrustedSigner,
    DowngradeRefused,
    AlreadyInstalled,
    TargetMismatch,
    AgentTooOld,
    UnsafeArchive,
)
