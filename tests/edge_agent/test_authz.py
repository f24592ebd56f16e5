"""The device's own certificate check (``edge_agent.authz``), without sockets or a hub."""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence

import pytest

from edge_agent.authz import decide_user_cert
from remoteler.access import (
    ACCESS_ROLE,
    RULES_EXTENSION,
    Role,
    encode_rules,
    resolve_rules,
)
from remoteler.ca import (
    DEFAULT_USER_EXTENSIONS,
    CertAuthority,
    CertSpec,
    certificate_to_openssh,
    encode_certificate,
    generate_private_key,
)

NOW = 1_700_000_000
TTL = 3600
LABELS = {"env": "lab", "site": "berlin"}
PROD_ONLY = Role("prod-only", ("pi",), {"env": ("prod*",)})


@pytest.fixture(scope="module")
def user_ca() -> CertAuthority:
    return CertAuthority.generate("user", "test")


def _extensions(roles: Sequence[Role], logins: Sequence[str]) -> dict[str, str]:
    ext = dict(DEFAULT_USER_EXTENSIONS)
    ext[RULES_EXTENSION] = encode_rules(resolve_rules(roles, logins))
    return ext


def _cert(
    ca: CertAuthority,
    *,
    principals: Sequence[str] = ("pi",),
    now: int = NOW,
    ttl: int = TTL,
    extensions: Mapping[str, str] | None = None,
    roles: Sequence[Role] = (ACCESS_ROLE,),
) -> str:
    return ca.sign_ssh_user_cert(
        generate_private_key().public_key(),
        key_id="alice",
        principals=principals,
        ttl_seconds=ttl,
        now=now,
        extensions=_extensions(roles, principals) if extensions is None else extensions,
    )


def _check(
    cert: str | bytes,
    ca: CertAuthority,
    *,
    login: str = "pi",
    labels: Mapping[str, str] = LABELS,
    now: float = NOW,
) -> str | None:
    return decide_user_cert(cert, login, ca.public_key, labels, "dev1", now).reason


def test_accepts_a_good_certificate(user_ca: CertAuthority) -> None:
    cert = _cert(user_ca)
    assert _check(cert, user_ca) is None


def test_accepts_the_raw_blob_as_sshd_passes_it(user_ca: CertAuthority) -> None:
    blob = base64.b64decode(_cert(user_ca).split()[1])
    assert _check(blob, user_ca) is None


def test_accepts_throughout_the_validity_window(user_ca: CertAuthority) -> None:
    cert = _cert(user_ca)
    # valid_after is now - 60 s (clock skew); valid_before is exclusive
    assert _check(cert, user_ca, now=NOW - 60) is None
    assert _check(cert, user_ca, now=NOW + TTL - 1) is None


def test_refuses_an_expired_certificate(user_ca: CertAuthority) -> None:
    cert = _cert(user_ca)
    assert _check(cert, user_ca, now=NOW + TTL) == "certificate expired or not yet valid"
    assert _check(cert, user_ca, now=NOW + 10 * TTL) == "certificate expired or not yet valid"


def test_refuses_a_certificate_not_yet_valid(user_ca: CertAuthority) -> None:
    cert = _cert(user_ca, now=NOW + 3600)
    assert _check(cert, user_ca) == "certificate expired or not yet valid"


def test_refuses_a_certificate_from_another_ca(user_ca: CertAuthority) -> None:
    other = CertAuthority.generate("user", "test")
    cert = _cert(other)
    assert _check(cert, user_ca) == "certificate not signed by the user CA"


def test_refuses_a_certificate_with_a_forged_signature(user_ca: CertAuthority) -> None:
    other = CertAuthority.generate("user", "test")
    good = _cert(user_ca)
    forged = _cert(other)
    # keep the trusted CA's key in the body, so only the signature is wrong
    good_blob = base64.b64decode(good.split()[1])
    forged_blob = bytearray(base64.b64decode(forged.split()[1]))
    ca_other = other.public_key.public_bytes_raw()
    ca_ours = user_ca.public_key.public_bytes_raw()
    assert ca_ours in good_blob and ca_other in forged_blob
    forged_blob = bytes(forged_blob).replace(ca_other, ca_ours)
    assert _check(forged_blob, user_ca) == "certificate not signed by the user CA"


def test_refuses_a_host_certificate_from_the_host_ca(user_ca: CertAuthority) -> None:
    host_ca = CertAuthority.generate("host", "test")
    cert = host_ca.sign_ssh_host_cert(
        generate_private_key().public_key(), key_id="pi", principals=["pi"], now=NOW
    )
    assert _check(cert, user_ca) == "certificate not signed by the user CA"


def test_refuses_a_host_certificate_even_from_the_user_ca(user_ca: CertAuthority) -> None:
    spec = CertSpec(
        cert_type="host",
        key_id="alice",
        principals=("pi",),
        valid_after=NOW - 60,
        valid_before=NOW + TTL,
        extensions=_extensions([ACCESS_ROLE], ["pi"]),
    )
    blob = encode_certificate(spec, generate_private_key().public_key(), user_ca.private_key)
    assert _check(certificate_to_openssh(blob), user_ca) == "not a user certificate"


def test_refuses_a_login_not_among_the_principals(user_ca: CertAuthority) -> None:
    cert = _cert(user_ca, principals=("pi",))
    reason = _check(cert, user_ca, login="root")
    assert reason == "login 'root' is not among the certificate's principals"


def test_refuses_a_principal_the_rules_do_not_allow(user_ca: CertAuthority) -> None:
    # principals and rules disagree (hub bug or hand-made cert): the rules decide
    ext = _extensions([ACCESS_ROLE], ["pi"])
    cert = _cert(user_ca, principals=("pi", "root"), extensions=ext)
    reason = _check(cert, user_ca, login="root")
    assert reason is not None and "login 'root' is not allowed for user 'alice'" in reason


def test_refuses_a_certificate_without_rules(user_ca: CertAuthority) -> None:
    cert = _cert(user_ca, extensions=dict(DEFAULT_USER_EXTENSIONS))
    assert _check(cert, user_ca) == "certificate carries no access rules"
    cert = _cert(user_ca, extensions={**DEFAULT_USER_EXTENSIONS, RULES_EXTENSION: ""})
    assert _check(cert, user_ca) == "certificate carries no access rules"


@pytest.mark.parametrize(
    "rules",
    [
        "not json",
        '{"r":"access"}',
        '["x"]',
        '[{"r":"access","l":"pi","n":{}}]',
        '[{"r":"access","l":["pi"],"n":[]}]',
        "[{",
    ],
)
def test_refuses_malformed_rules(user_ca: CertAuthority, rules: str) -> None:
    cert = _cert(user_ca, extensions={**DEFAULT_USER_EXTENSIONS, RULES_EXTENSION: rules})
    assert _check(cert, user_ca) == "certificate access rules are malformed"


def test_refuses_when_labels_do_not_match(user_ca: CertAuthority) -> None:
    cert = _cert(user_ca, roles=[PROD_ONLY])
    reason = _check(cert, user_ca, labels={"env": "lab"})
    assert reason is not None
    assert "node 'dev1' (env=lab) matches no role of user 'alice'" in reason
    assert _check(cert, user_ca, labels={"env": "production"}) is None
    assert _check(cert, user_ca, labels={}) is not None


def test_refuses_an_unreadable_certificate(user_ca: CertAuthority) -> None:
    reason = _check("ssh-ed25519-cert-v01@openssh.com !!!", user_ca)
    assert reason is not None and reason.startswith("unreadable certificate")
    reason = _check(b"\x00\x00\x00\x05junk", user_ca)
    assert reason is not None and reason.startswith("unreadable certificate")


def test_refuses_an_unknown_critical_option(user_ca: CertAuthority) -> None:
    # PROTOCOL.certkeys: a critical option the verifier does not recognise means refuse
    spec = CertSpec(
        cert_type="user",
        key_id="alice",
        principals=("pi",),
        valid_after=NOW - 60,
        valid_before=NOW + TTL,
        critical_options={"verify-required": ""},
        extensions=_extensions([ACCESS_ROLE], ["pi"]),
    )
    blob = encode_certificate(spec, generate_private_key().public_key(), user_ca.private_key)
    reason = _check(certificate_to_openssh(blob), user_ca)
    assert reason is not None and "critical option" in reason


def test_accepts_the_critical_options_asyncssh_enforces(user_ca: CertAuthority) -> None:
    spec = CertSpec(
        cert_type="user",
        key_id="alice",
        principals=("pi",),
        valid_after=NOW - 60,
        valid_before=NOW + TTL,
        critical_options={"force-command": "uptime", "source-address": "10.0.0.0/8"},
        extensions=_extensions([ACCESS_ROLE], ["pi"]),
    )
    blob = encode_certificate(spec, generate_private_key().public_key(), user_ca.private_key)
    assert _check(certificate_to_openssh(blob), user_ca) is None


def test_refuses_empty_principals_which_openssh_reads_as_any(user_ca: CertAuthority) -> None:
    spec = CertSpec(
        cert_type="user",
        key_id="alice",
        principals=(),
        valid_after=NOW - 60,
        valid_before=NOW + TTL,
        extensions=_extensions([ACCESS_ROLE], ["pi"]),
    )
    blob = encode_certificate(spec, generate_private_key().public_key(), user_ca.private_key)
    assert _check(certificate_to_openssh(blob), user_ca, login="pi") is not None
