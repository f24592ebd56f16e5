"""hub/admin/identity.py: DATA/admin-identity written 0600 and renewed when due."""

from __future__ import annotations

import stat
from pathlib import Path

from hubkit import Clock

from hub.admin.identity import ADMIN_TTL, AdminIdentity, Written, due
from hub.auth.service import AuthService
from remoteler.admin import BUILTIN_ADMIN
from remoteler.identity import identity_paths, read_identity_file


def test_due() -> None:
    fresh = Written(expires=1000.0 + ADMIN_TTL, revision="r1")
    assert due(None, 1000.0, "r1")
    assert not due(fresh, 1000.0, "r1")
    assert not due(fresh, 1000.0 + ADMIN_TTL / 2 - 1, "r1")
    assert due(fresh, 1000.0 + ADMIN_TTL / 2 + 1, "r1")  # half its life gone
    assert due(fresh, 1000.0, "r2")  # a CA rotation phase changed


async def test_written_0600_and_renewed(tmp_path: Path, auth: AuthService, clock: Clock) -> None:
    revision = ["r1"]
    keeper = AdminIdentity(
        tmp_path,
        auth,
        revision=lambda: revision[0],
        host_ca_pems=lambda: [auth.host_ca.x509_pem],
        clock=clock,
    )
    assert await keeper.renew_if_due()
    path = tmp_path / "admin-identity"
    for p in identity_paths(path):
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    first = read_identity_file(path)
    assert first.user == BUILTIN_ADMIN
    assert first.valid_before == int(clock.now) + ADMIN_TTL

    clock.now += 3600
    assert not await keeper.renew_if_due()  # not due: left as it is
    assert read_identity_file(path).ssh_cert == first.ssh_cert

    clock.now += ADMIN_TTL / 2
    assert await keeper.renew_if_due()  # past half its life
    second = read_identity_file(path)
    assert second.valid_before > first.valid_before and second.key_pem != first.key_pem

    revision[0] = "r2"  # the rotation state changed: new CAs sign the next one
    assert await keeper.renew_if_due()
    assert read_identity_file(path).ssh_cert != second.ssh_cert

    for p in identity_paths(path):
        p.unlink()  # removed by hand: written again at the next check
    assert await keeper.renew_if_due() and path.exists()
