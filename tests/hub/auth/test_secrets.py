"""Verifiers for passwords, TOTP codes and tokens, with the production Argon2 parameters."""

from __future__ import annotations

import asyncio

import pyotp
import pytest
from argon2 import Type, extract_parameters

from hub.auth import secrets as hs

SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"


@pytest.mark.usefixtures("fast_argon2")
@pytest.mark.parametrize("stored", [None, "", "not a hash", "$argon2id$v=19$garbage"])
def test_verify_without_a_usable_hash_is_false(stored: str | None) -> None:
    assert hs.verify_password(stored, "anything") is False


async def test_argon2id_production_parameters_off_the_event_loop() -> None:
    stored = await hs.hash_password_async("correct horse")
    params = extract_parameters(stored)
    assert params.type is Type.ID
    assert params.memory_cost >= 64 * 1024 and params.time_cost >= 2
    assert "correct horse" not in stored
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.ensure_future(ticker())
    try:
        assert await hs.verify_password_async(stored, "correct horse") is True
        assert await hs.verify_password_async(stored, "correct horsE") is False
    finally:
        task.cancel()
    assert ticks >= 10, "the event loop kept running while Argon2 worked"


def test_totp_step_window_and_format() -> None:
    now = 1_700_000_000.0
    step = int(now // 30)
    totp = pyotp.TOTP(SECRET)
    assert hs.totp_step(SECRET, totp.at(now), now) == step
    assert hs.totp_step(SECRET, f" {totp.at(now)} ", now) == step
    assert hs.totp_step(SECRET, totp.at(now - 30), now) == step - 1
    assert hs.totp_step(SECRET, totp.at(now + 30), now) == step + 1
    assert hs.totp_step(SECRET, totp.at(now - 60), now) is None
    for bad in ("", "12345", "1234567", "abcdef", "12 456"):
        assert hs.totp_step(SECRET, bad, now) is None


def test_tokens() -> None:
    token = hs.new_token()
    assert len(token) == 32 and token != hs.new_token()
    assert hs.hash_token(token) == hs.hash_token(f"  {token}\n"), "pasted whitespace ignored"
    assert token not in hs.hash_token(token) and len(hs.hash_token(token)) == 64
