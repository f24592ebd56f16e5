"""The names both ends of a connection share (remoteler/protocol.py): defined there
once, agreeing with the package version and the protocol generation, and used,
not spelt again, by the hub, the agent and tsh."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

from remoteler import protocol

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("remoteler", "hub", "edge_agent", "tsh", "firmware_tools", "tctl")
#: values that may appear as a literal only in remoteler/protocol.py
NAMES = {
    protocol.VERSION,
    protocol.TUNNEL_SUBPROTOCOL,
    protocol.CONNECT_SUBPROTOCOL,
    protocol.RPC_SUBPROTOCOL,
    protocol.TUNNEL_ALPN,
}
KINDS = {
    protocol.SSH_KIND,
    protocol.AUDIT_KIND,
    protocol.ROTATE_KIND,
    protocol.LOCKS_KIND,
    protocol.FIRMWARE_KIND,
}


def test_versions_match_the_package_and_the_wire() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["version"] == protocol.VERSION
    generation = protocol.PROTOCOL_VERSION
    for name in (
        protocol.TUNNEL_SUBPROTOCOL,
        protocol.CONNECT_SUBPROTOCOL,
        protocol.RPC_SUBPROTOCOL,
    ):
        assert name.endswith(f".v{generation}"), name
    assert protocol.TUNNEL_ALPN.endswith(f"/{generation}")


def _is_kind_use(node: ast.AST) -> bool:
    """``x.open_channel("ssh", ...)`` or ``request.kind == "ssh"``: a spelt-out kind."""
    if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "open_channel":
        first = node.args[0] if node.args else None
        return isinstance(first, ast.Constant) and first.value in KINDS
    if isinstance(node, ast.Compare) and getattr(node.left, "attr", None) == "kind":
        return any(isinstance(c, ast.Constant) and c.value in KINDS for c in node.comparators)
    return False


def spelt_out(root: Path = ROOT) -> list[str]:
    found = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            if path == root / "remoteler" / "protocol.py":
                continue
            lines = set()
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                literal = isinstance(node, ast.Constant) and node.value in NAMES
                if literal or _is_kind_use(node):
                    lines.add(getattr(node, "lineno", 0))
            found += [f"{path.relative_to(root)}:{line}" for line in sorted(lines)]
    return found


def test_the_check_sees_a_spelt_out_name(tmp_path: Path) -> None:
    (tmp_path / "tsh").mkdir()
    (tmp_path / "tsh" / "x.py").write_text(
        'A = "remoteler.connect.v1"\n'
        'async def f(t, request):\n    await t.open_channel("locks", {})\n'
        '    return request.kind == "audit"\n'
    )
    assert spelt_out(tmp_path) == ["tsh/x.py:1", "tsh/x.py:3", "tsh/x.py:4"]


def test_shared_names_are_imported_not_spelt_again() -> None:
    assert spelt_out() == [], "import these from remoteler/protocol.py"
