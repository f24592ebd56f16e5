"""SSO connectors as resources: ``tctl create -f connector.toml`` (docs/sso.md).

The document's common keys are read here, each kind's own keys by its module
(``oidc.py``, ``github.py``, ``saml.py``). ``tctl`` reads ``client_secret_file`` (and
SAML's ``idp_metadata_file``) on the admin's machine and sends the contents; the hub
stores the client secret encrypted with the CA passphrase when one is set, and never
shows it again (``tctl get connectors`` prints ``client_secret = "********"``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Set
from dataclasses import dataclass, field
from typing import Any

from hub.auth.service import check_name
from hub.sso.mapping import MapRule, parse_rules
from hub.storage.api import StoredConnector
from remoteler.errors import UsageError

KINDS = ("oidc", "github", "saml")
COMMON_KEYS = {"kind", "name", "display", "client_secret", "client_secret_file"}
#: the rules' key and the name of the claim key in its tables, per kind
RULES_KEY = {"oidc": ("claims_to_roles", "claim"), "saml": ("attributes_to_roles", "name")}
SECRET_MASK = "********"  # noqa: S105 (shown in place of the secret)
#: the settings key of the cluster's default connector (``kind = "auth_preference"``)
DEFAULT_CONNECTOR_KEY = "auth.connector"
LOCAL = "local"


@dataclass(frozen=True)
class Connector:
    name: str
    kind: str
    display: str
    #: the kind's own keys, as its module validated them (no secret)
    spec: dict[str, Any]
    rules: tuple[MapRule, ...]
    client_secret: str | None = field(default=None, repr=False)

    def public(self) -> dict[str, Any]:
        """What ``tctl get connectors`` shows: the document, the secret masked."""
        doc: dict[str, Any] = {"kind": self.kind, "name": self.name, "display": self.display}
        doc.update(self.spec)
        if self.client_secret:
            doc["client_secret"] = SECRET_MASK
        tables = self.rule_tables()
        if tables is not None:
            doc[RULES_KEY[self.kind][0]] = tables
        return doc

    def rule_tables(self) -> list[dict[str, Any]] | None:
        """The rules as the document writes them (OIDC ``{claim, value, roles}``, SAML
        ``{name, value, roles}``); None for GitHub, whose ``teams_to_roles`` is in the
        spec."""
        key = RULES_KEY.get(self.kind)
        if key is None:
            return None
        return [{key[1]: r.claim, "value": r.value, "roles": list(r.roles)} for r in self.rules]


def _kind_keys(kind: str) -> tuple[Set[str], Callable[[dict[str, Any]], dict[str, Any]]]:
    if kind == "oidc":
        from hub.sso.oidc import OIDC_KEYS, parse_oidc

        return OIDC_KEYS, parse_oidc
    if kind == "github":
        from hub.sso.github import GITHUB_KEYS, parse_github

        return GITHUB_KEYS, parse_github
    from hub.sso.saml import SAML_KEYS, parse_saml

    return SAML_KEYS, parse_saml


def _rules(kind: str, doc: dict[str, Any], spec: dict[str, Any]) -> tuple[MapRule, ...]:
    if kind == "github":
        from hub.sso.github import teams_rules

        return tuple(MapRule(c, v, tuple(r)) for c, v, r in teams_rules(spec))
    key, claim_key = RULES_KEY[kind]
    rules = parse_rules(doc.get(key), key, claim_key)
    if not rules:
        raise UsageError(f"the connector maps nobody to a role: add {key} (docs/sso.md)")
    return rules


def parse_connector(doc: dict[str, Any]) -> Connector:
    """A connector document (as tctl sends it: secrets read from their files)."""
    kind = doc.get("kind")
    if kind not in KINDS:
        raise UsageError(f"kind must be one of {', '.join(KINDS)} for a connector")
    name = doc.get("name")
    if not isinstance(name, str):
        raise UsageError('the connector needs a name = "..."')
    check_name("connector", name)
    if name == LOCAL:
        raise UsageError('"local" names password + TOTP logins; pick another connector name')
    if "client_secret_file" in doc:
        raise UsageError(
            "client_secret_file is read by tctl on your machine: run 'tctl create -f FILE'"
        )
    display = doc.get("display", name)
    if not isinstance(display, str) or not display or len(display) > 64:
        raise UsageError("display must be a short text for the login page (at most 64)")
    keys, parse = _kind_keys(kind)
    unknown = sorted(set(doc) - COMMON_KEYS - keys)
    if unknown:
        raise UsageError(
            f"unknown key {unknown[0]!r} in the {kind} connector; use "
            f"{', '.join(sorted((COMMON_KEYS - {'client_secret'}) | keys))}"
        )
    secret = doc.get("client_secret")
    if secret is not None and (not isinstance(secret, str) or not secret.strip()):
        raise UsageError("the client secret is empty: check client_secret_file")
    if secret == SECRET_MASK:
        raise UsageError(
            "client_secret is the mask 'tctl get connectors' shows: give client_secret_file"
        )
    if kind == "github" and not secret:
        raise UsageError("a github connector needs client_secret_file (the OAuth app's secret)")
    spec = parse({k: v for k, v in doc.items() if k in keys})
    spec.pop(RULES_KEY.get(kind, ("",))[0], None)  # kept as rules, not in the spec
    return Connector(
        name, kind, display, spec, _rules(kind, doc, spec), secret.strip() if secret else None
    )


def to_stored(
    connector: Connector, seal: Callable[[str, str], str] | None, now: float
) -> StoredConnector:
    """The stored form; ``seal(secret, aad_name)`` encrypts the secret (a CA passphrase)."""
    body: dict[str, Any] = {"display": connector.display, "spec": connector.spec}
    tables = connector.rule_tables()
    if tables is not None:
        body["rules"] = tables
    if connector.client_secret:
        secret = connector.client_secret
        body["client_secret"] = seal(secret, _aad(connector.name)) if seal else secret
    return StoredConnector(connector.name, connector.kind, json.dumps(body), now)


def from_stored(row: StoredConnector, unseal: Callable[[str, str], str] | None) -> Connector:
    body = json.loads(row.spec)
    doc: dict[str, Any] = {"kind": row.kind, "name": row.name, "display": body["display"]}
    doc.update(body["spec"])
    key = RULES_KEY.get(row.kind)
    if key is not None:
        doc[key[0]] = body.get("rules", [])
    secret = body.get("client_secret")
    if secret:
        doc["client_secret"] = unseal(secret, _aad(row.name)) if unseal else secret
    return parse_connector(doc)


def _aad(name: str) -> str:
    # the seed cipher's associated data is a user name; "/" is never in one
    return f"connector/{name}"
