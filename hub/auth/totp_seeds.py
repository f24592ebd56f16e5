"""TOTP seeds sealed with the CA passphrase on their way into storage (hub/auth/seedcrypt.py).

The storage keeps a seed as it is handed over (docs/storage.md): this wrapper of
:class:`hub.storage.api.Users` encrypts on ``put`` and decrypts on ``get``/``all``,
so the rest of the hub sees plain seeds. :func:`seal` puts it on a storage at the
composition root (the hub, tctl). Without a cipher an encrypted seed is passed
through opaque (and written back unchanged).
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

from hub.auth.seedcrypt import SeedCipher, is_encrypted, salt_of
from hub.storage.api import Storage, User, Users
from remoteler.errors import ConfigError


class SealedUsers:
    """:class:`Users` with the TOTP seed encrypted at rest."""

    def __init__(self, inner: Users, seeds: SeedCipher) -> None:
        self.inner = inner
        self.seeds = seeds

    async def get(self, name: str) -> User | None:
        user = await self.inner.get(name)
        return await self._out(user) if user else None

    async def all(self) -> list[User]:
        return [await self._out(u) for u in await self.inner.all()]

    async def put(self, user: User) -> None:
        await self.inner.put(await self._in(user))

    async def delete(self, name: str) -> bool:
        return await self.inner.delete(name)

    async def record_totp_step(self, name: str, step: int) -> bool:
        return await self.inner.record_totp_step(name, step)

    async def _out(self, user: User) -> User:
        if user.totp_secret is None:
            return user
        await self._key(salt_of(user.totp_secret))
        return replace(user, totp_secret=self.seeds.decrypt(user.totp_secret, user.name))

    async def _in(self, user: User) -> User:
        if user.totp_secret is None:
            return user
        await self._key(self.seeds.write_salt())
        return replace(user, totp_secret=self.seeds.encrypt(user.totp_secret, user.name))

    async def _key(self, salt: bytes | None) -> None:
        """Derive a missing seed key in a thread: scrypt must not stall the event loop."""
        if salt is not None and not self.seeds.has_key(salt):
            await asyncio.to_thread(self.seeds.derive, salt)


async def seal(storage: Storage, seeds: SeedCipher | None) -> Users:
    """Wrap ``storage.users`` with ``seeds`` (None: leave it); the raw section, for
    :func:`migrate`. New seeds reuse the salt already stored: one key for all."""
    raw = storage.users
    if isinstance(raw, SealedUsers):
        raw = raw.inner
    if seeds is None:
        return raw
    for user in await raw.all():
        if user.totp_secret and (salt := salt_of(user.totp_secret)) is not None:
            seeds.use_salt(salt)
            break
    storage.users = SealedUsers(raw, seeds)
    return raw


async def check(raw: Users, seeds: SeedCipher | None) -> None:
    """With a cipher: derive every salt's key now (not in a login) and decrypt one seed
    per salt, so a wrong passphrase raises :class:`ConfigError` here, at start."""
    if seeds is None:
        return
    sealed = SealedUsers(raw, seeds)
    checked: set[bytes] = set()
    for user in await raw.all():
        if user.totp_secret and is_encrypted(user.totp_secret):
            salt = salt_of(user.totp_secret)
            if salt is None or salt not in checked:
                await sealed._out(user)
                if salt is not None:
                    checked.add(salt)
    await sealed._key(seeds.write_salt())


async def migrate(raw: Users, seeds: SeedCipher | None) -> int:
    """Encrypt every plain TOTP seed (with a cipher); how many. Without a cipher, refuse
    to go on if any seed is encrypted: the hub could not check codes."""
    users = [u for u in await raw.all() if u.totp_secret is not None]
    if seeds is None:
        if any(is_encrypted(u.totp_secret or "") for u in users):
            raise ConfigError(
                "the TOTP seeds in the hub database are encrypted: start the hub with "
                "--ca-passphrase-file FILE (the CA passphrase)"
            )
        return 0
    await check(raw, seeds)
    plain = [u for u in users if not is_encrypted(u.totp_secret or "")]
    sealed = SealedUsers(raw, seeds)
    for user in plain:
        await sealed.put(user)
    return len(plain)
