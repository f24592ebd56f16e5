"""hub/cakeys.py: the cluster's CAs in the shared database, on a real PostgreSQL."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from pgkit import PgServer

from hub import cakeys
from hub.datadir import DataDir
from hub.storage.postgres import open_postgres
from remoteler.errors import ConfigError

PASSPHRASE = b"correct horse battery staple"


async def test_hubs_starting_at_once_agree_on_one_pair_of_cas(
    pg_server: PgServer, tmp_path: Path
) -> None:
    url = pg_server.new_database()
    a, b = await asyncio.gather(open_postgres(url), open_postgres(url))
    try:
        (name_a, cas_a), (name_b, cas_b) = await asyncio.gather(
            cakeys.cluster_cas(a, "fleet.example", PASSPHRASE),
            cakeys.cluster_cas(b, "other.example", PASSPHRASE),
        )
        assert name_a == name_b  # the first --cluster-name wins
        assert sorted(c.x509_pem for c in cas_a) == sorted(c.x509_pem for c in cas_b)
        assert {c.kind for c in cas_a} == {"user", "host"}
        assert all(c.private_key.startswith(b"-----BEGIN ENCRYPTED") for c in cas_a)
        # every data dir gets the same CAs, readable with the passphrase
        pins = []
        for name in ("one", "two"):
            data = DataDir(tmp_path / name, passphrase=PASSPHRASE)
            cakeys.install(data, name_a, cas_a)
            cakeys.install(data, name_a, cas_a)  # again: nothing to do
            pins.append({kind: data.load_ca(kind).pin() for kind in ("user", "host")})
        assert pins[0] == pins[1]
        with pytest.raises(ConfigError) as wrong:
            await cakeys.cluster_cas(b, "fleet.example", b"not the passphrase")
        assert str(wrong.value).startswith("wrong CA passphrase for the ")
        other = DataDir(tmp_path / "other", passphrase=PASSPHRASE)
        other.init("elsewhere")
        with pytest.raises(ConfigError, match="belongs to cluster 'elsewhere'"):
            cakeys.install(other, name_a, cas_a)
    finally:
        await a.close()
        await b.close()
