"""Only energyd/store/ knows SQL: no other module imports sqlite3, calls `.execute(` (or
executemany/executescript) or holds an SQL statement in a string. The rest of energyd reaches
the store through its repositories' methods.

NOT_YET_CONVERTED lists the modules still reading or writing tables themselves, through the
store's `execute` and `transaction` kept for them alone; it only shrinks, and a module that
no longer needs its place must leave the list (the last test says so).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "energyd"
STORE = PACKAGE / "store"
NOT_YET_CONVERTED = {
    "demo.py",  # becomes the demo/ package, reading the status API
}
_SQL = re.compile(
    r"\b(SELECT\s+\S.*?\bFROM\b|INSERT\s+(OR\s+\w+\s+)?INTO\b|UPDATE\s+(OR\s+\w+\s+)?\w+\s+SET\b"
    r"|DELETE\s+FROM\b|CREATE\s+(TEMP\s+|UNIQUE\s+)?(TABLE|INDEX|VIEW|TRIGGER)\b"
    r"|DROP\s+(TABLE|INDEX|VIEW|TRIGGER)\b|ALTER\s+TABLE\b|PRAGMA\s+\w+|BEGIN\s+IMMEDIATE\b)",
    re.DOTALL)
_CALLS = {"execute", "executemany", "executescript"}


def sql_in(source: str) -> list[str]:
    """Where `source` knows SQL: one line per finding, "line N: what"."""
    found = []
    for node in ast.walk(ast.parse(source)):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Import):
            found += [f"line {line}: imports {a.name}" for a in node.names
                      if a.name.split(".")[0] == "sqlite3"]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "sqlite3":
            found.append(f"line {line}: imports from {node.module}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr in _CALLS:
            found.append(f"line {line}: calls .{node.func.attr}()")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            m = _SQL.search(node.value)
            if m:
                found.append(f"line {line}: SQL in a string ({m.group(0)[:40]!r})")
    return sorted(set(found), key=lambda s: int(s.split()[1].rstrip(":")))


SOURCES = sorted(p for p in PACKAGE.rglob("*.py") if STORE not in p.parents
                 and str(p.relative_to(PACKAGE)) not in NOT_YET_CONVERTED)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_sql_outside_the_store(path: Path) -> None:
    rel = str(path.relative_to(PACKAGE))
    found = sql_in(path.read_text(encoding="utf-8"))
    assert not found, f"energyd/{rel} knows SQL (only energyd/store/ may):\n" + "\n".join(found)


def test_the_list_of_modules_not_yet_converted_only_names_modules_that_need_it() -> None:
    stale = [rel for rel in sorted(NOT_YET_CONVERTED)
             if (PACKAGE / rel).exists() and not sql_in((PACKAGE / rel).read_text("utf-8"))]
    assert not stale, f"no SQL left in {stale}: take them off NOT_YET_CONVERTED"


@pytest.mark.parametrize("source, what", [
    ("import sqlite3\n", "imports sqlite3"),
    ("from sqlite3 import connect\n", "imports from sqlite3"),
    ("store.execute('x')\n", "calls .execute()"),
    ("conn.executemany(q, rows)\n", "calls .executemany()"),
    ("q = 'SELECT id FROM series WHERE device = ?'\n", "SQL in a string"),
    ("q = ('INSERT INTO rollups (device) '\n     'VALUES (?)')\n", "SQL in a string"),
    ("q = f'DELETE FROM samples WHERE id = {i}'\n", "SQL in a string"),
    ("q = 'UPDATE alerts SET state = 1'\n", "SQL in a string"),
    ("q = 'CREATE TABLE t (a)'\n", "SQL in a string"),
])
def test_each_kind_of_sql_is_found(source: str, what: str) -> None:
    assert any(what in f for f in sql_in(source)), sql_in(source)


def test_words_in_prose_are_not_sql() -> None:
    assert sql_in('"""Select the devices; update the rollups from the readings."""\n'
                  'help = "delete from the list, then create a table of results"\n') == []
