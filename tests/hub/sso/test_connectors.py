"""Connector documents (hub/sso/connectors.py): parsing, storing with the secret
sealed by the CA passphrase's cipher, and what ``tctl get connectors`` shows."""

from __future__ import annotations

import json
from typing import Any

import pytest

from hub.auth.seedcrypt import SeedCipher
from hub.sso.connectors import SECRET_MASK, from_stored, parse_connector, to_stored
from remoteler.errors import UsageError

OIDC: dict[str, Any] = {
    "kind": "oidc",
    "name": "corp",
    "issuer_url": "https://idp.example.com",
    "client_id": "remoteler",
    "client_secret": "very-secret-value",
    "claims_to_roles": [{"claim": "groups", "value": "ops", "roles": ["access"]}],
}


def test_the_issue_s_oidc_document_parses_with_defaults() -> None:
    c = parse_connector(OIDC)
    assert (c.name, c.kind, c.display) == ("corp", "oidc", "corp")
    assert c.spec["scopes"] == ["openid", "email", "profile"]
    assert c.spec["username_claim"] == "preferred_username"
    assert "claims_to_roles" not in c.spec
    assert c.rules[0].roles == ("access",)
    assert c.client_secret == "very-secret-value"
    assert "very-secret" not in repr(c)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kind": "ldap"}, "kind must be one of oidc, github, saml"),
        ({"name": "local"}, '"local" names password'),
        ({"name": "bad name"}, "bad connector name"),
        ({"issuer_url": "http://idp.example.com"}, "issuer_url must use https://"),
        ({"issuer_url": 5}, "issuer_url must be a URL"),
        ({"client_id": ""}, "client_id must be"),
        ({"claims_to_roles": []}, "maps nobody to a role"),
        ({"client_secret_file": "/x"}, "client_secret_file is read by tctl"),
        ({"colour": "blue"}, "unknown key 'colour'"),
        ({"scopes": "openid"}, "scopes must be a list"),
        ({"client_secret": "  "}, "the client secret is empty"),
        ({"client_secret": "********"}, "the mask 'tctl get connectors' shows"),
    ],
)
def test_bad_documents_are_one_line_errors(change: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError) as err:
        parse_connector({**OIDC, **change})
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_loopback_issuers_may_use_http_for_tests() -> None:
    for url in ("http://127.0.0.1:9000", "http://[::1]:9000/x", "http://localhost:1"):
        assert parse_connector({**OIDC, "issuer_url": url}).spec["issuer_url"] == url


def test_openid_scope_is_always_asked() -> None:
    c = parse_connector({**OIDC, "scopes": ["email", "groups"]})
    assert c.spec["scopes"] == ["openid", "email", "groups"]


def test_the_secret_is_stored_sealed_and_comes_back() -> None:
    cipher = SeedCipher(b"a CA passphrase")
    c = parse_connector(OIDC)
    row = to_stored(c, cipher.encrypt, 1.0)
    assert "very-secret-value" not in row.spec
    assert json.loads(row.spec)["client_secret"].startswith("enc1:")
    back = from_stored(row, cipher.decrypt)
    assert back == c
    # sealed for this connector's name: moved to another row it does not open
    moved = type(row)("other", row.kind, row.spec, row.created)
    with pytest.raises(Exception, match="cannot decrypt"):
        from_stored(moved, cipher.decrypt)


def test_without_a_passphrase_the_secret_round_trips_plain() -> None:
    c = parse_connector(OIDC)
    assert from_stored(to_stored(c, None, 1.0), None) == c


def test_public_view_masks_the_secret() -> None:
    shown = parse_connector(OIDC).public()
    assert shown["client_secret"] == SECRET_MASK
    assert "very-secret-value" not in json.dumps(shown)
    # the rules as the document wrote them: tctl get connectors | tctl create -f works
    assert shown["claims_to_roles"] == OIDC["claims_to_roles"]


def test_public_view_of_saml_rules_uses_their_name_key() -> None:
    rules = [{"name": "groups", "value": "techs", "roles": ["field-tech"]}]
    saml = {
        "kind": "saml",
        "name": "okta",
        "idp_metadata_url": "https://idp.example.com/metadata",
        "attributes_to_roles": rules,
    }
    connector = parse_connector(saml)
    assert connector.public()["attributes_to_roles"] == rules
    assert from_stored(to_stored(connector, None, 1.0), None) == connector
