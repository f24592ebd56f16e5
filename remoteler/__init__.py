"""Remoteler's shared core: wire protocol, certificates, audit schema, config."""

import warnings

# cryptography 51 deprecates DSA and warns when asyncssh (which still offers DSA
# keys) is imported. We issue and accept Ed25519 only; the warning would be the
# first line of every tsh, hub and agent error output.
warnings.filterwarnings("ignore", message="DSA is deprecated", module=r"asyncssh(\.|$)")
