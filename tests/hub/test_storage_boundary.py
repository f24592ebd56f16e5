"""Only hub/storage opens a database (issue 16, item 1: "Nothing else in the hub opens
a database or a state file").

Every module under hub/ is parsed (never imported) and every import counts, wherever
it is: at the top, under ``if TYPE_CHECKING:``, inside a function, or by
``importlib.import_module("...")`` / ``__import__("...")`` with a literal name. A
database driver imported outside hub/storage is a second way to the hub's state,
around the interface (hub/storage/api.py), its transactions and its change feed.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HUB = ROOT / "hub"
STORAGE = HUB / "storage"
#: the database drivers of both engines
DRIVERS = frozenset({"sqlite3", "aiosqlite", "psycopg", "psycopg_pool"})


def drivers_imported(source: str, filename: str = "<source>") -> set[str]:
    """The :data:`DRIVERS` that ``source`` imports, by any statement anywhere in it."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module)
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and (
                (isinstance(node.func, ast.Name) and node.func.id == "__import__")
                or (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
            )
        ):
            names.add(node.args[0].value)
    return {top for top in (name.partition(".")[0] for name in names) if top in DRIVERS}


def test_no_module_outside_hub_storage_imports_a_database_driver() -> None:
    found = {
        str(path.relative_to(ROOT)): sorted(drivers)
        for path in sorted(HUB.rglob("*.py"))
        if not path.is_relative_to(STORAGE)
        and (drivers := drivers_imported(path.read_text(), str(path)))
    }
    assert found == {}, (
        f"database drivers imported outside hub/storage: {found}; "
        "go through hub.storage.api.Storage (or add what is missing to it)"
    )


def test_the_engines_are_seen_importing_their_drivers() -> None:
    """The walk reads the files it should: hub/storage's own imports are found."""
    seen: set[str] = set()
    for path in STORAGE.rglob("*.py"):
        seen |= drivers_imported(path.read_text(), str(path))
    assert seen == DRIVERS, seen


def test_every_way_of_importing_is_caught() -> None:
    source = """
import os, sqlite3 as db
from aiosqlite import connect
from . import sqlite3
from .sqlite3 import x

def late():
    import psycopg.rows
    from psycopg_pool import AsyncConnectionPool
    importlib.import_module("sqlite3.dbapi2")
    __import__("aiosqlite")
"""
    assert drivers_imported(source) == DRIVERS
    assert drivers_imported("from . import sqlite3\nfrom .aiosqlite import x\n") == set()
    assert drivers_imported('"""sqlite3, aiosqlite, hub.db"""\nimport os\n') == set()
