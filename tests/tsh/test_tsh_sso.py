"""tsh's side of an SSO login (tsh/sso.py): the loopback listener takes the hub's sealed
answer once, refuses what is not for it, and gives up when the login lapses. The test
plays the hub's part: it answers ``sso.start`` and then, as the browser would after the
identity provider, requests the listener's URL."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlencode

import pytest

from remoteler.errors import AuthError
from remoteler.ssoseal import decode_key, new_key, seal
from tsh.sso import sso_login

ANSWER = {"user": "alice", "ssh_cert": "cert", "tls_cert": "pem", "expires": 1, "logins": []}


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return err.code


class FakeHubAndBrowser:
    """``sso.start`` as the hub answers it; then the browser's visits to the listener."""

    def __init__(self, visits: list[str], expires_in: float = 10) -> None:
        self.visits, self.expires_in = visits, expires_in
        self.statuses: list[int] = []

    async def __call__(self, method: str, **params: Any) -> Any:
        assert method == "sso.start"
        assert params["redirect_url"].startswith("http://127.0.0.1:")
        key = decode_key(params["client_key"])

        def browse() -> None:
            for visit in self.visits:
                query = {
                    "good": lambda: {"response": seal(key, "r1", ANSWER)},
                    "forged": lambda: {"response": seal(new_key(), "r1", ANSWER)},
                    "refused": lambda: {"error": "no role is mapped for 'bob'"},
                    "other-path": lambda: {},
                }[visit]()
                base = params["redirect_url"]
                url = base.replace("/callback", "/x") if visit == "other-path" else base
                self.statuses.append(_get(url + "?" + urlencode(query)))

        threading.Thread(target=browse, daemon=True).start()
        return {
            "url": "https://hub/web/sso/start/r1",
            "request_id": "r1",
            "expires_in": self.expires_in,
        }


async def test_the_sealed_answer_is_taken_once(capsys: pytest.CaptureFixture[str]) -> None:
    hub = FakeHubAndBrowser(["other-path", "good"])
    assert await sso_login(hub, "corp", "ssh-ed25519 AAAA", None, "none") == ANSWER
    assert hub.statuses == [404, 200]
    assert "https://hub/web/sso/start/r1" in capsys.readouterr().err


async def test_an_answer_sealed_with_another_key_is_refused() -> None:
    with pytest.raises(AuthError, match="did not decrypt"):
        await sso_login(FakeHubAndBrowser(["forged"]), "corp", "k", None, "none")


async def test_the_hub_s_refusal_is_shown_in_one_line() -> None:
    with pytest.raises(AuthError, match="login refused: no role is mapped for 'bob'"):
        await sso_login(FakeHubAndBrowser(["refused"]), "corp", "k", None, "none")


async def test_a_login_never_finished_gives_up_when_it_lapses() -> None:
    with pytest.raises(AuthError, match="not finished in the browser within 1 s"):
        await sso_login(FakeHubAndBrowser([], expires_in=1), "corp", "k", None, "none")
