"""AuthService with real CAs and a real SQLite file: users, logins, certificates, join."""

from __future__ import annotations

import asyncio
import logging
import time

import pyotp
import pytest
from hubkit import PASSWORD, TOTP_SECRET, Clock, new_key_line

from hub.auth.service import LOGIN_FAILED, AuthService
from remoteler.access import (
    LOGINS_TRAIT,
    ROLES_EXTENSION,
    RULES_EXTENSION,
    AccessRule,
    Role,
    decode_rules,
)
from remoteler.ca import load_certificate, parse_certificate
from remoteler.ca.x509 import cert_common_name, cert_organization
from remoteler.errors import AuthError, UsageError

pytestmark = pytest.mark.usefixtures("fast_argon2")


def otp(clock: Clock, secret: str = TOTP_SECRET) -> str:
    return str(pyotp.TOTP(secret).at(clock()))


async def _user_with_password(auth: AuthService, name: str = "alice", **kw: object) -> None:
    _, invite = await auth.add_user(
        name,
        kw.get("roles", ["access"]),  # type: ignore[arg-type]
        kw.get("logins", ["pi", "ubuntu"]),  # type: ignore[arg-type]
        password=PASSWORD,
        totp_secret=TOTP_SECRET,
    )
    assert invite is None


async def test_add_user_with_password_returns_no_invite(auth: AuthService) -> None:
    user, invite = await auth.add_user(
        "alice", ["access"], ["pi"], password=PASSWORD, totp_secret="jbsw y3dp ehpk 3pxp"
    )
    assert invite is None
    assert user.password_hash and user.password_hash.startswith("$argon2id$")
    assert PASSWORD not in user.password_hash
    assert user.totp_secret == "JBSWY3DPEHPK3PXP", "normalised base32"
    assert await auth.storage.users.get("alice") == user


async def test_add_user_without_password_returns_invite(auth: AuthService) -> None:
    user, invite = await auth.add_user("bob", ["access"], ["pi"])
    assert invite and len(invite) >= 32
    assert user.password_hash is None and user.totp_secret
    info = await auth.invite_info("bob", invite)
    assert info["totp_secret"] == user.totp_secret
    assert info["totp_uri"].startswith("otpauth://totp/")


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"name": "bad name"}, "bad user name"),
        ({"roles": ["nope"]}, "role 'nope' does not exist"),
        ({"logins": ["pi;rm"]}, "bad login"),
        ({"password": "short"}, "password too short"),
        ({"totp_secret": "not-base32!"}, "bad TOTP secret"),
    ],
)
async def test_add_user_refuses_bad_input(
    auth: AuthService, kwargs: dict[str, object], needle: str
) -> None:
    args: dict[str, object] = {"name": "carol", "roles": ["access"], "logins": ["pi"]}
    args.update(kwargs)
    with pytest.raises(UsageError, match=needle):
        await auth.add_user(**args)  # type: ignore[arg-type]
    assert await auth.storage.users.all() == []


async def test_add_user_twice_refused(auth: AuthService) -> None:
    await auth.add_user("dave", ["access"], ["pi"])
    with pytest.raises(UsageError, match="already exists"):
        await auth.add_user("dave", ["access"], ["pi"])


async def test_login_issues_certs_with_logins_and_rules(auth: AuthService, clock: Clock) -> None:
    await auth.storage.roles.put(Role("lab", logins=("lab",), node_labels={"env": ("lab",)}))
    await _user_with_password(auth, roles=["access", "lab"])
    _, pub = new_key_line()
    issued = await auth.login("alice", PASSWORD, otp(clock), pub, None)

    cert = parse_certificate(issued.ssh_cert)
    assert cert.signature_valid and cert.cert_type == "user"
    assert cert.ca_public == auth.user_ca.public_key
    assert cert.key_id == "alice"
    assert cert.principals == ("pi", "ubuntu", "lab") == issued.logins
    assert cert.valid_before == int(clock()) + 12 * 3600 == issued.expires
    assert "permit-pty" in cert.extensions
    assert cert.extensions[ROLES_EXTENSION] == "access,lab"
    assert decode_rules(cert.extensions[RULES_EXTENSION]) == [
        AccessRule("access", ("pi", "ubuntu"), {"*": ("*",)}),
        AccessRule("lab", ("lab",), {"env": ("lab",)}),
    ]
    tls = issued.tls_cert.encode()
    assert cert_common_name(tls) == "alice"
    assert cert_organization(tls) == "remoteler-user"
    assert load_certificate(tls).issuer == load_certificate(auth.user_ca.x509_pem).subject


async def test_same_totp_code_twice_is_refused(auth: AuthService, clock: Clock) -> None:
    await _user_with_password(auth)
    _, pub = new_key_line()
    code = otp(clock)
    await auth.login("alice", PASSWORD, code, pub, None)
    with pytest.raises(AuthError) as exc:
        await auth.login("alice", PASSWORD, code, pub, None)
    assert str(exc.value) == LOGIN_FAILED
    # An older (still in-window) code is refused too; the next step's code works.
    with pytest.raises(AuthError):
        await auth.login("alice", PASSWORD, str(pyotp.TOTP(TOTP_SECRET).at(clock() - 30)), pub, 60)
    clock.advance(30)
    await auth.login("alice", PASSWORD, otp(clock), pub, 60)


async def test_concurrent_logins_with_one_code_only_one_wins(
    auth: AuthService, clock: Clock
) -> None:
    await _user_with_password(auth)
    _, pub = new_key_line()
    code = otp(clock)
    results = await asyncio.gather(
        *(auth.login("alice", PASSWORD, code, pub, None) for _ in range(3)),
        return_exceptions=True,
    )
    assert sum(not isinstance(r, BaseException) for r in results) == 1
    assert all(isinstance(r, AuthError) for r in results if isinstance(r, BaseException))


async def test_wrong_password_unknown_user_and_bad_otp_look_the_same(
    auth: AuthService, clock: Clock
) -> None:
    await _user_with_password(auth)
    _, pub = new_key_line()
    messages = []
    for name, password, code in [
        ("alice", "wrong password!", otp(clock)),
        ("mallory", PASSWORD, otp(clock)),
        ("alice", PASSWORD, "000000" if otp(clock) != "000000" else "111111"),
        ("alice", PASSWORD, "abc"),
    ]:
        with pytest.raises(AuthError) as exc:
            await auth.login(name, password, code, pub, None)
        messages.append(str(exc.value))
    assert messages == [LOGIN_FAILED] * 4


async def test_invited_user_cannot_log_in_before_accepting(auth: AuthService, clock: Clock) -> None:
    await auth.add_user("bob", ["access"], ["pi"], totp_secret=TOTP_SECRET)
    _, pub = new_key_line()
    with pytest.raises(AuthError, match="login failed"):
        await auth.login("bob", "", otp(clock), pub, None)


async def test_ttl_capped_by_role_max_session_ttl(auth: AuthService, clock: Clock) -> None:
    await auth.storage.roles.put(Role("short", logins=(LOGINS_TRAIT,), max_session_ttl=600))
    await _user_with_password(auth, roles=["access", "short"])
    user = await auth.storage.users.get("alice")
    assert user is not None
    _, pub = new_key_line()
    now = int(clock())
    for asked, got in [(None, 600), (3600, 600), (120, 120)]:
        issued = await auth.issue_user_certs(user, pub, asked)
        cert = parse_certificate(issued.ssh_cert)
        assert cert.valid_before - now == got == issued.expires - now
        x509_left = load_certificate(issued.tls_cert.encode()).not_valid_after_utc.timestamp()
        assert x509_left - time.time() <= got + 5
    issued = await auth.login("alice", PASSWORD, otp(clock), pub, 99_999)
    assert issued.expires - now == 600


async def test_bad_public_key_is_a_usage_error(auth: AuthService, clock: Clock) -> None:
    user, _ = await auth.add_user("bob", ["access"], ["pi"])
    with pytest.raises(UsageError, match="bad public key"):
        await auth.issue_user_certs(user, "ssh-ed25519 AAAAnope", None)


# join ----------------------------------------------------------------------


async def test_join_issues_node_certs_and_token_is_single_use(auth: AuthService) -> None:
    token, record = await auth.add_token("node", 600, {"site": "berlin"})
    _, pub = new_key_line()
    joined = await auth.join(token, "truck-1", {"env": "dev"}, pub, "1.0")
    node_id = joined["node_id"]
    host = parse_certificate(joined["ssh_cert"])
    # truck-1.<cluster>: the host name OpenSSH checks through 'tsh config'
    principals = (node_id, "truck-1", f"truck-1.{auth.cluster}")
    assert host.cert_type == "host" and host.principals == principals
    assert host.ca_public == auth.host_ca.public_key and host.forever
    assert cert_common_name(joined["tls_cert"].encode()) == node_id
    assert cert_organization(joined["tls_cert"].encode()) == "remoteler-node"
    assert joined["user_ca_ssh"] == auth.user_ca.ssh_public_line()
    node = await auth.storage.nodes.get("truck-1")
    assert node is not None and node.id == node_id and node.version == "1.0"
    stored = await auth.storage.tokens.get(record.token_hash)
    assert stored is not None and stored.used_by == node_id

    with pytest.raises(AuthError, match="already used"):
        await auth.join(token, "truck-2", {}, pub, "1.0")
    assert await auth.storage.nodes.get("truck-2") is None


async def test_concurrent_joins_with_one_token_only_one_wins(auth: AuthService) -> None:
    token, _ = await auth.add_token("node", 600, {})
    _, pub = new_key_line()
    results = await asyncio.gather(
        *(auth.join(token, f"n{i}", {}, pub, "") for i in range(5)), return_exceptions=True
    )
    assert sum(isinstance(r, dict) for r in results) == 1
    assert all(isinstance(r, AuthError) for r in results if not isinstance(r, dict))
    assert len(await auth.storage.nodes.all()) == 1


async def test_join_token_labels_win_over_agent_labels(auth: AuthService) -> None:
    token, _ = await auth.add_token("node", 600, {"env": "prod", "site": "x"})
    _, pub = new_key_line()
    joined = await auth.join(token, "n1", {"env": "dev", "arch": "arm64"}, pub, "")
    assert joined["labels"] == {"env": "prod", "site": "x", "arch": "arm64"}
    assert joined["token_labels"] == {"env": "prod", "site": "x"}  # the device needs them too
    node = await auth.storage.nodes.get("n1")
    assert node is not None and dict(node.labels) == joined["labels"]


async def test_join_expired_and_unknown_tokens(auth: AuthService, clock: Clock) -> None:
    token, _ = await auth.add_token("node", 60, {})
    _, pub = new_key_line()
    clock.advance(60)
    with pytest.raises(AuthError, match="join token expired"):
        await auth.join(token, "n1", {}, pub, "")
    with pytest.raises(AuthError, match="join token not recognised"):
        await auth.join("f" * 32, "n1", {}, pub, "")
    assert await auth.storage.nodes.all() == []


async def test_join_duplicate_name_keeps_the_token(auth: AuthService) -> None:
    _, pub = new_key_line()
    first, _ = await auth.add_token("node", 600, {})
    await auth.join(first, "n1", {}, pub, "")
    second, record = await auth.add_token("node", 600, {})
    with pytest.raises(UsageError, match="a node named 'n1' already exists"):
        await auth.join(second, "n1", {}, pub, "")
    stored = await auth.storage.tokens.get(record.token_hash)
    assert stored is not None and stored.used_by is None, "a refused join must not burn the token"
    await auth.join(second, "n2", {}, pub, "")


async def test_concurrent_joins_of_one_name_one_wins_the_other_is_told(
    auth: AuthService,
) -> None:
    """Two joins of one new name with two tokens: both pass the name check, the storage
    refuses the second insert (Conflict), and that join gets the one-line answer."""
    tokens = [(await auth.add_token("node", 600, {}))[0] for _ in range(2)]
    _, pub = new_key_line()
    results = await asyncio.gather(
        *(auth.join(t, "twin", {}, pub, "") for t in tokens), return_exceptions=True
    )
    assert sum(isinstance(r, dict) for r in results) == 1
    (lost,) = [r for r in results if not isinstance(r, dict)]
    assert isinstance(lost, UsageError) and "pick another --name" in str(lost), repr(lost)


@pytest.mark.parametrize(
    ("name", "key", "err", "needle"),
    [
        ("bad name!", None, UsageError, "bad node name"),
        ("n1", "ssh-rsa AAAA", UsageError, "bad public key"),
    ],
)
async def test_join_bad_input(
    auth: AuthService, name: str, key: str | None, err: type[Exception], needle: str
) -> None:
    token, record = await auth.add_token("node", 600, {})
    with pytest.raises(err, match=needle):
        await auth.join(token, name, {}, key or new_key_line()[1], "")
    stored = await auth.storage.tokens.get(record.token_hash)
    assert stored is not None and stored.used_by is None


async def test_add_token_only_node_kind(auth: AuthService) -> None:
    with pytest.raises(UsageError, match="bad token type"):
        await auth.add_token("user", 60, {})


# invites -------------------------------------------------------------------


async def test_invite_accept_flow(auth: AuthService, clock: Clock) -> None:
    _, invite = await auth.add_user("bob", ["access"], ["pi"], totp_secret=TOTP_SECRET)
    assert invite is not None
    _, pub = new_key_line()
    with pytest.raises(AuthError, match="invite not valid"):
        await auth.invite_info("bob", "0" * 32)
    with pytest.raises(AuthError, match="invite not valid"):
        await auth.invite_info("alice", invite)
    with pytest.raises(UsageError, match="password too short"):
        await auth.accept_invite("bob", invite, "short", otp(clock), pub, None)
    with pytest.raises(AuthError, match="one-time code"):
        await auth.accept_invite("bob", invite, PASSWORD, "123", pub, None)

    issued = await auth.accept_invite("bob", invite, PASSWORD, otp(clock), pub, None)
    assert parse_certificate(issued.ssh_cert).principals == ("pi",)
    with pytest.raises(AuthError, match="invite not valid"):
        await auth.accept_invite("bob", invite, PASSWORD, otp(clock), pub, None)

    with pytest.raises(AuthError):  # the code used to accept is spent
        await auth.login("bob", PASSWORD, otp(clock), pub, None)
    clock.advance(30)
    await auth.login("bob", PASSWORD, otp(clock), pub, None)


async def test_invite_expires(auth: AuthService, clock: Clock) -> None:
    _, invite = await auth.add_user("bob", ["access"], ["pi"], totp_secret=TOTP_SECRET)
    assert invite is not None
    clock.advance(24 * 3600 + 1)
    _, pub = new_key_line()
    with pytest.raises(AuthError, match="invite not valid"):
        await auth.accept_invite("bob", invite, PASSWORD, otp(clock), pub, None)


# secrets never reach the logs ------------------------------------------------


async def test_no_secret_in_any_log_record(
    auth: AuthService, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    _, pub = new_key_line()
    await _user_with_password(auth)
    await auth.login("alice", PASSWORD, otp(clock), pub, None)
    for bad in ("wrong password!", PASSWORD):
        with pytest.raises(AuthError):
            await auth.login("alice", bad, otp(clock), pub, None)
    token, _ = await auth.add_token("node", 600, {})
    await auth.join(token, "n1", {}, pub, "")
    with pytest.raises(AuthError):
        await auth.join(token, "n2", {}, pub, "")
    _, invite = await auth.add_user("bob", ["access"], ["pi"])
    assert invite is not None
    info = await auth.invite_info("bob", invite)
    clock.advance(30)
    await auth.accept_invite("bob", invite, PASSWORD + "!", otp(clock, info["totp_secret"]), pub, 1)

    assert caplog.records, "the flows above log"
    secrets = [PASSWORD, token, invite]
    for record in caplog.records:
        text = f"{record.getMessage()} {record.__dict__!r}"
        for secret in secrets:
            assert secret not in text, (record.name, record.msg)
        if record.name.startswith("remoteler"):
            for seed in (TOTP_SECRET, info["totp_secret"]):
                assert seed not in text, (record.name, record.msg)


@pytest.mark.parametrize("name", ["legacy-1\n", "legacy-1\r", "\u212aelvin", "\u017fh", "a b", ""])
def test_check_name_refuses_a_trailing_newline_and_non_ascii(name: str) -> None:
    from hub.auth.service import check_name

    with pytest.raises(UsageError, match="bad node name"):
        check_name("node", name)


def test_check_name_and_logins_accept_plain_names() -> None:
    from hub.auth.service import check_logins, check_name

    assert check_name("node", "Legacy-1.plc_2") == "Legacy-1.plc_2"
    assert check_logins(["pi", "svc$", "Ubuntu"]) == ("pi", "svc$", "Ubuntu")
    for bad in ("pi\n", "svc$\n", "\u212a"):
        with pytest.raises(UsageError, match="bad login"):
            check_logins([bad])
