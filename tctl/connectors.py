"""tctl's side of SSO connectors (docs/sso.md): ``tctl create -f`` of kinds oidc,
github, saml and auth_preference; ``tctl get connectors``; ``tctl rm connector/NAME``.

Files named in the document are read here, on the admin's machine, relative to the
document's folder: ``client_secret_file`` (sent as ``client_secret``, stored encrypted
at the hub) and SAML's ``idp_metadata_file`` (sent as ``idp_metadata``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from pathlib import Path
from typing import Any

from remoteler.admin import AdminMethod
from remoteler.errors import UsageError

CONNECTOR_KINDS = ("oidc", "github", "saml")
FILE_KEYS = {"client_secret_file": "client_secret", "idp_metadata_file": "idp_metadata"}


def read_doc(path: Path, text: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path} is not valid TOML: {exc}") from None


def with_files(doc: dict[str, Any], folder: Path) -> dict[str, Any]:
    """``doc`` with each ``*_file`` key replaced by the file's text."""
    out = dict(doc)
    for key, target in FILE_KEYS.items():
        if key not in out:
            continue
        name = out.pop(key)
        if not isinstance(name, str) or not name:
            raise UsageError(f"{key} must be a file path")
        path = Path(name).expanduser()
        path = path if path.is_absolute() else folder / path
        try:
            out[target] = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise UsageError(f"cannot read {key} {path}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise UsageError(f"{key} {path} is not UTF-8 text") from None
    return out


async def create(hub: Any, path: Path, doc: dict[str, Any]) -> None:
    kind = doc.get("kind")
    if kind == "auth_preference":
        unknown = sorted(set(doc) - {"kind", "connector_name"})
        if unknown:
            raise UsageError(f"unknown key {unknown[0]!r} in auth_preference; use connector_name")
        out = await hub.call(
            AdminMethod.AUTH_PREFERENCE_SET, connector_name=str(doc.get("connector_name", ""))
        )
        name = out["connector_name"]
        print(
            "tsh login now uses password + TOTP by default."
            if name == "local"
            else f"tsh login now uses connector {name!r} by default."
        )
        return
    out = await hub.call(AdminMethod.CONNECTORS_PUT, doc=with_files(doc, path.parent))
    verb = "updated" if out["updated"] else "created"
    print(f"Connector {out['connector']!r} ({out['kind']}) {verb}.")
    print(f"Register this redirect URL with the identity provider: {out['callback_url']}")


def _toml_value(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(str(value))  # a TOML basic string is JSON's string syntax


def to_toml(doc: dict[str, Any]) -> str:
    lines = []
    for key, value in doc.items():
        if key == "idp_metadata":
            value = f"<{len(str(value))} characters of IdP metadata>"
        lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


async def get(args: argparse.Namespace, hub: Any) -> None:
    out = await hub.call(AdminMethod.CONNECTORS_LS)
    if args.format == "json":
        print(json.dumps(out, indent=2))
        return
    if not out["connectors"]:
        print("No connectors: create one with 'tctl create -f connector.toml' (docs/sso.md).")
    for doc in out["connectors"]:
        print(to_toml(doc))
    print(f"# default for tsh login: {out['default']}", file=sys.stderr)
