"""A real SAML 2.0 identity provider for tests: tests/idp/saml_idp.mjs (samlify) on loopback.

Usage::

    from samlkit import saml_idp, browser_login

    USERS = {"alice": {"groups": ["ops"], "email": "alice@example.com"}}
    with saml_idp(tmp_path, USERS) as idp:
        ...  # idp.metadata_url, idp.metadata_xml(), idp.base_url, idp.pid
        form = await browser_login(session, redirect_url, "alice")
        # form.action is the SP's ACS URL; form.fields holds SAMLResponse and RelayState

The IdP signs with a fresh RSA key and self-signed certificate made here (cryptography)
in the test's directory; it is stopped by its process id when the block ends. Fails the
test with a one-line hint when node or the npm packages (``make idp``) are missing.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import select
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from helpers import stop_process
from require import require_binary

IDP_DIR = Path(__file__).parent / "idp"
SCRIPT = IDP_DIR / "saml_idp.mjs"


@dataclass
class SamlIdp:
    port: int
    pid: int
    dir: Path
    log: Path
    proc: subprocess.Popen[Any]
    #: the Issuer of its responses (``--entity-id``; default: the metadata URL)
    entity_id: str

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def metadata_url(self) -> str:
        return f"{self.base_url}/metadata"

    def metadata_xml(self) -> str:
        with urllib.request.urlopen(self.metadata_url, timeout=10) as r:
            return str(r.read().decode())

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def make_signing_key(directory: Path, name: str = "idp") -> tuple[Path, Path]:
    """A fresh RSA-2048 key and a self-signed certificate (valid a day) as PEM files."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"test {name}")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = directory / f"{name}-key.pem", directory / f"{name}-cert.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def _read_port(proc: subprocess.Popen[Any], log: Path, timeout: float = 20) -> int:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.1)
        if ready:
            line = proc.stdout.readline()
            if line.strip().isdigit():
                return int(line)
            if not line and proc.poll() is not None:
                break
        elif proc.poll() is not None:
            break
    raise RuntimeError(f"the SAML IdP did not start: {log.read_text(errors='replace')[-2000:]}")


@contextlib.contextmanager
def saml_idp(
    tmp_path: Path,
    users: Mapping[str, Mapping[str, Any]],
    name: str = "saml-idp",
    entity_id: str | None = None,
) -> Iterator[SamlIdp]:
    """Start the test IdP on 127.0.0.1 with ``users`` (user name -> attributes, see
    tests/idp/saml_idp.mjs) and a fresh signing key; yield its :class:`SamlIdp`; stop
    it by pid. ``entity_id``: default ``<base_url>/metadata``."""
    node = require_binary("node", "nodejs")
    if not (IDP_DIR / "node_modules" / "samlify").is_dir():
        pytest.fail("samlify is not installed in tests/idp: run make idp", pytrace=False)
    d = tmp_path / name
    d.mkdir(parents=True, exist_ok=True)
    key, cert = make_signing_key(d)
    users_file = d / "users.json"
    users_file.write_text(json.dumps(users))
    log = d / "idp.log"
    argv = [node, str(SCRIPT), "--key", str(key), "--cert", str(cert), "--users", str(users_file)]
    if entity_id is not None:
        argv += ["--entity-id", entity_id]
    with log.open("wb") as err:
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=err,
            cwd=IDP_DIR,
            env={**os.environ, "NODE_ENV": "test"},
        )
    try:
        port = _read_port(proc, log)
        yield SamlIdp(
            port=port,
            pid=proc.pid,
            dir=d,
            log=log,
            proc=proc,
            entity_id=entity_id or f"http://127.0.0.1:{port}/metadata",
        )
    finally:
        stop_process(proc)
        if proc.stdout is not None:
            proc.stdout.close()


@dataclass
class Form:
    """The first HTML form of a page: where it posts and its fields."""

    action: str
    fields: dict[str, str] = field(default_factory=dict)


class _FormParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.form: Form | None = None
        self._done = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form" and self.form is None:
            self.form = Form(action=a.get("action", ""))
        elif tag == "input" and self.form is not None and not self._done and "name" in a:
            self.form.fields[a["name"]] = a.get("value", "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._done = True


def parse_form(html: str, base_url: str) -> Form:
    """The page's first form, its action made absolute against ``base_url``."""
    parser = _FormParser()
    parser.feed(html)
    if parser.form is None:
        raise AssertionError(f"no form in the page: {html[:500]}")
    parser.form.action = urljoin(base_url, parser.form.action)
    return parser.form


async def browser_login(
    session: aiohttp.ClientSession, redirect_url: str, username: str, **extra: str
) -> Form:
    """Do what a browser does with the IdP: GET the AuthnRequest redirect, fill in the
    login form with ``username`` (and the test knobs in ``extra``: ``sign``,
    ``lifetime``), POST it; return the auto-submitting form (SAMLResponse, RelayState)
    that would go to the SP's ACS."""
    async with session.get(redirect_url) as r:
        page = await r.text()
        assert r.status == 200, f"IdP login page: HTTP {r.status}: {page[:300]}"
        login = parse_form(page, str(r.url))
    assert "username" in login.fields or 'name="username"' in page
    fields = {k: v for k, v in login.fields.items() if k != "username"}
    fields.update(username=username, **extra)
    async with session.post(login.action, data=fields) as r:
        page = await r.text()
        assert r.status == 200, f"IdP login: HTTP {r.status}: {page[:300]}"
        return parse_form(page, str(r.url))
