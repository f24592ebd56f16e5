"""``hub start --workers N``: what makes each worker differ, and the refusals."""

from __future__ import annotations

import pytest

from hub.cli import build_parser
from hub.workers import check, worker_settings
from remoteler.errors import UsageError


def _args(*argv: str) -> object:
    return build_parser().parse_args(["start", *argv])


def test_each_worker_has_its_id_and_peer_port() -> None:
    args = _args("--workers", "3", "--listen", "127.0.0.1:3080", "--peer-listen", "[::1]:4000")
    check(args)  # type: ignore[arg-type]
    assert worker_settings(args, 0, "hub-x") == [  # type: ignore[arg-type]
        *("--worker-index", "0", "--hub-id", "hub-x-w0", "--peer-listen", "[::1]:4000"),
    ]
    assert worker_settings(args, 2, "hub-x")[-1] == "[::1]:4002"  # type: ignore[arg-type]
    any_port = _args("--workers", "2", "--listen", "127.0.0.1:3080", "--peer-listen", "127.0.0.1:0")
    assert worker_settings(any_port, 1, "h")[-1] == "127.0.0.1:0"  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (("--workers", "0", "--listen", "127.0.0.1:1", "--peer-listen", "127.0.0.1:2"), "1 to 64"),
        (("--workers", "2", "--listen", "127.0.0.1:0", "--peer-listen", "127.0.0.1:2"), "fixed"),
        (("--workers", "2", "--listen", "127.0.0.1:1"), "--peer-listen"),
    ],
)
def test_refusals_are_one_line(argv: tuple[str, ...], says: str) -> None:
    with pytest.raises(UsageError) as err:
        check(_args(*argv))  # type: ignore[arg-type]
    assert says in str(err.value) and "\n" not in str(err.value)
