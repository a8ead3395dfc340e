"""Only energyd/store/ knows SQL: no other module imports sqlite3, calls `.execute(` (or
executemany/executescript) or holds an SQL statement in a string. The rest of energyd reaches
the store through its repositories' methods; the store hands out no connection and runs no
SQL it is given.
"""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "energyd"
STORE = PACKAGE / "store"
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


SOURCES = sorted(p for p in PACKAGE.rglob("*.py") if STORE not in p.parents)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_sql_outside_the_store(path: Path) -> None:
    rel = str(path.relative_to(PACKAGE))
    found = sql_in(path.read_text(encoding="utf-8"))
    assert not found, f"energyd/{rel} knows SQL (only energyd/store/ may):\n" + "\n".join(found)


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


def test_the_store_runs_no_sql_it_is_given_and_hands_out_no_connection(tmp_path: Path) -> None:
    """The other half of the rule: above the store there is no way to SQL left, since no
    public method of the store or of a repository takes SQL text or returns the connection
    (or a context manager of it)."""
    import inspect

    from energyd.store.sqlite import Store

    with Store.open(tmp_path / "s.db") as store:
        owners = [store] + [v for k, v in vars(store).items() if not k.startswith("_")
                            and type(v).__module__.startswith("energyd.store.")]
        owners += [getattr(store, k) for k, v in vars(Store).items()
                   if isinstance(v, functools.cached_property)]
        found = []
        for owner in owners:
            for name, method in inspect.getmembers(type(owner), inspect.isfunction):
                if name.startswith("_"):
                    continue
                signature = inspect.signature(method)
                if "sql" in signature.parameters or "Connection" in str(
                        signature.return_annotation):
                    found.append(f"{type(owner).__name__}.{name}")
    assert len(owners) > 10  # the repositories were found
    assert not found, f"raw SQL reachable through {found}"
    assert not hasattr(store, "execute") and not hasattr(store, "transaction")
