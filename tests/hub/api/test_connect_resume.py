"""``/v1/connect?...&resume=``: what the hub passes to the device, and what it refuses."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hubkit import FakeAgent, Hub
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from remoteler.hubconn import ERROR_HEADER
from remoteler.protocol import CONNECT_SUBPROTOCOL
from remoteler.wire.aio import ChannelRequest
from remoteler.wire.codes import OpenFailure


class MetaAgent(FakeAgent):
    """Keeps each ssh channel's meta and refuses the channel."""

    def __init__(self) -> None:
        self.metas: list[dict[str, Any]] = []

    async def on_channel(self, request: ChannelRequest) -> None:
        if request.kind == "ssh":
            self.metas.append(dict(request.meta))
        request.reject(OpenFailure.REFUSED, "enough")


async def _connect(hub: Hub, user: object, query: str) -> None:
    async with connect(
        hub.url(f"/v1/connect?node=dev1&login=pi{query}"),
        ssl=user,
        compression=None,
        subprotocols=[CONNECT_SUBPROTOCOL],  # type: ignore[list-item]
        open_timeout=10,
    ) as ws:
        with pytest.raises(Exception):  # noqa: B017 - the refusal closes it
            await asyncio.wait_for(ws.recv(), 10)


@pytest.mark.parametrize("resume", ["", "new", "0123456789abcdef0123456789abcdef"])
async def test_resume_and_the_users_key_reach_the_device(hub: Hub, resume: str) -> None:
    agent = MetaAgent()
    await agent.dial(hub, "dev1")
    cert_pem, key_pem = await hub.user_creds()
    try:
        query = f"&resume={resume}" if resume else ""
        await _connect(hub, hub.tls(cert_pem, key_pem), query)
    finally:
        await agent.close()
    (meta,) = agent.metas
    if not resume:
        assert "resume" not in meta and "user_key" not in meta
        return
    spki = (
        x509.load_pem_x509_certificate(cert_pem)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    assert meta["resume"] == resume
    assert meta["user_key"] == hashlib.sha256(spki).hexdigest()
    assert meta["user"] == "alice"


@pytest.mark.parametrize("bad", ["x", "NEW", "0" * 31, "0" * 33, "../" * 11, "ABCDEF" * 6])
async def test_a_bad_resume_value_is_refused_before_any_device_is_asked(hub: Hub, bad: str) -> None:
    agent = MetaAgent()
    await agent.dial(hub, "dev1")
    cert_pem, key_pem = await hub.user_creds()
    try:
        with pytest.raises(InvalidStatus) as refused:
            await _connect(hub, hub.tls(cert_pem, key_pem), f"&resume={bad}")
    finally:
        await agent.close()
    response = refused.value.response
    assert response.status_code == 400 and response.headers[ERROR_HEADER] == "usage"
    assert b"resume must be 'new' or a session id" in response.body
    assert agent.metas == []
