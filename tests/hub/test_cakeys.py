"""hub/cakeys.py and hub/cluster_init.py: the cluster's CAs in the shared database,
on a real PostgreSQL: hubs starting at once agree on one pair, keys encrypted."""

from __future__ import annotations

import asyncio

import pytest
from pgkit import PgServer

from hub.cakeys import to_authority
from hub.cluster_init import init_cluster
from hub.storage.postgres import open_postgres
from remoteler.errors import ConfigError

PASSPHRASE = b"correct horse battery staple"


async def test_hubs_starting_at_once_agree_on_one_pair_of_cas(pg_server: PgServer) -> None:
    url = pg_server.new_database()
    a, b = await asyncio.gather(open_postgres(url), open_postgres(url))
    try:
        name_a, name_b = await asyncio.gather(
            init_cluster(a, "fleet.example", PASSPHRASE),
            init_cluster(b, "other.example", PASSPHRASE),
        )
        assert name_a == name_b  # the first --cluster-name wins
        cas_a, cas_b = await a.authorities.all(), await b.authorities.all()
        assert sorted(c.x509_pem for c in cas_a) == sorted(c.x509_pem for c in cas_b)
        assert {c.kind for c in cas_a} == {"user", "host"}
        assert all(c.private_key.startswith(b"-----BEGIN ENCRYPTED") for c in cas_a)
        pins = {c.kind: to_authority(c, name_a, PASSPHRASE).pin() for c in cas_b}
        assert pins == {c.kind: to_authority(c, name_a, PASSPHRASE).pin() for c in cas_a}
        with pytest.raises(ConfigError) as wrong:
            to_authority(cas_b[0], name_a, b"not the passphrase")
        assert str(wrong.value).startswith("wrong CA passphrase for the ")
        with pytest.raises(ConfigError, match="is encrypted: give its passphrase"):
            to_authority(cas_b[0], name_a, None)
    finally:
        await a.close()
        await b.close()
