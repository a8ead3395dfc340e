"""Checking a store file and recovering what can be read of a damaged one.

Both work on the file alone, opened read-only, and need no running daemon (stop it first:
a recovery reads one moment of the file). Nothing here ever writes to the store checked or
recovered: a recovery goes into a new file, which must not exist yet.

Recovery tries SQLite's own `.recover` first (the `sqlite3` command-line shell): it reads
every page it can, also past damaged ones, and puts rows it cannot place in a
`lost_and_found` table. It needs a shell built with the `sqlite_dbpage` table, which
Debian's 3.40 is not (its `.recover` fails at once with "SQL logic error"). Then, or without
the shell, energyd copies table by table itself, reading a table in order of its rowids and
stepping over a damaged stretch (a seek past it reaches the pages that are intact): what
lies on the damaged pages is lost, the rest is kept, and the result counts each damaged
stretch met. Either way the result says which was used.
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from energyd.errors import StoreError

_HEADER = b"SQLite format 3\0"


def _readonly(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)


def check_file(path: Path, *, full: bool = False, limit: int = 20) -> list[str]:
    """What is wrong with the store file at `path`: [] when SQLite finds it intact.
    `full` runs `integrity_check` (indexes against their tables too) instead of
    `quick_check`."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(_HEADER))
    except FileNotFoundError:
        raise StoreError(f"{path}: no store here") from None
    except OSError as exc:
        raise StoreError(f"{path}: cannot read: {exc.strerror}") from None
    if not head:
        return ["the file is empty: not a store"]
    if head != _HEADER:
        return ["the file is not an SQLite database"]
    pragma = "integrity_check" if full else "quick_check"
    try:
        conn = _readonly(path)
        try:
            rows = conn.execute(f"PRAGMA {pragma}({int(limit)})").fetchall()
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        return [str(exc)]
    return problem_lines(r[0] for r in rows)


def problem_lines(rows: Iterable[str]) -> list[str]:
    """integrity_check's answer as a list of problems, [] for "ok"."""
    lines = [line for row in rows for line in row.splitlines()
             if line.strip() and not line.startswith("*** in database")]
    return [] if lines == ["ok"] else lines


@dataclass
class Recovered:
    method: str  # "sqlite3 .recover" or "table copy"
    path: Path
    rows: dict[str, int] = field(default_factory=dict)  # table -> rows in the new store
    lost_and_found: int = 0  # rows .recover could not place in their table
    damaged: list[str] = field(default_factory=list)  # table copy: the stretches stepped over
    shell_error: str | None = None  # why the shell's .recover was not used
    problems: list[str] = field(default_factory=list)  # the new store's own check
    seconds: float = 0.0


def recover(source: Path, target: Path, *, shell: str | None = "sqlite3") -> Recovered:
    """Copy what can be read of `source` into the new file `target`. `shell` names the
    sqlite3 command-line shell (None: do not use it)."""
    source, target = Path(source), Path(target)
    if not source.exists():
        raise StoreError(f"{source}: no store here")
    if target.exists() or target.with_name(target.name + "-wal").exists():
        raise StoreError(f"{target}: already exists; recovery writes only to a new file")
    if target.resolve() == source.resolve():
        raise StoreError(f"{target}: is the store itself; recovery writes to a new file")
    target.parent.mkdir(parents=True, exist_ok=True)
    making = target.with_name(target.name + ".partial")
    making.unlink(missing_ok=True)
    started = time.monotonic()
    found = shutil.which(shell) if shell else None
    try:
        shell_error = None
        result = None
        if found:
            try:
                result = _with_shell(found, source, making)
            except StoreError as exc:
                shell_error = str(exc)
                making.unlink(missing_ok=True)
        if result is None:
            result = _copy_tables(source, making)
            result.shell_error = shell_error if found else "no sqlite3 shell" if shell else None
        _finish(making, source, result)
        making.rename(target)
    finally:
        making.unlink(missing_ok=True)
    result.path = target
    result.seconds = round(time.monotonic() - started, 2)
    return result


def _with_shell(shell: str, source: Path, making: Path) -> Recovered:
    dump = subprocess.Popen([shell, "-readonly", str(source), ".recover"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    load = subprocess.run([shell, str(making)], stdin=dump.stdout, capture_output=True)
    assert dump.stdout is not None and dump.stderr is not None
    dump.stdout.close()
    dump_err = dump.stderr.read().decode(errors="replace").strip()
    dump.wait()
    if dump.returncode != 0 or not making.exists():
        raise StoreError(f"{source}: sqlite3 .recover failed: {dump_err or 'no output'}")
    if load.returncode != 0:
        # statements the shell could not load are reported; what loaded is kept
        err = load.stderr.decode(errors="replace").strip().splitlines()
        if err and not making.exists():
            raise StoreError(f"{source}: loading the recovered rows failed: {err[0]}")
    return Recovered("sqlite3 .recover", making)


BATCH = 5000
MAX_STEP = 2**40


def _copy_tables(source: Path, making: Path) -> Recovered:
    result = Recovered("table copy", making)
    src = _readonly(source)
    dst = sqlite3.connect(str(making), isolation_level=None)
    try:
        try:
            schema = src.execute("SELECT type, name, sql FROM sqlite_master "
                                 "WHERE sql IS NOT NULL").fetchall()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{source}: its schema cannot be read ({exc}): nothing can be "
                             f"recovered without the sqlite3 shell's .recover") from None
        tables = [(name, sql) for kind, name, sql in schema
                  if kind == "table" and not name.startswith("sqlite_")]
        dst.execute("BEGIN")
        for _, sql in tables:
            dst.execute(sql)
        for name, sql in tables:
            _copy_table(src, dst, name, "WITHOUT ROWID" in sql.upper(), result)
        if any("AUTOINCREMENT" in sql.upper() for _, sql in tables):
            with contextlib.suppress(sqlite3.DatabaseError):
                dst.executemany("INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)",
                                src.execute("SELECT name, seq FROM sqlite_sequence").fetchall())
        for kind, _, sql in schema:
            if kind in ("index", "trigger", "view"):
                dst.execute(sql)
        dst.execute("COMMIT")
    finally:
        src.close()
        dst.close()
    return result


def _copy_table(src: sqlite3.Connection, dst: sqlite3.Connection, table: str,
                without_rowid: bool, result: Recovered) -> None:
    columns = [r[1] for r in src.execute(f'PRAGMA table_info("{table}")')]
    names = ", ".join(f'"{c}"' for c in columns)
    marks = ", ".join("?" * len(columns))
    if without_rowid:  # no rowid to step by: whole, or as far as it reads
        rows = src.execute(f'SELECT {names} FROM "{table}"')
        try:
            while batch := rows.fetchmany(BATCH):
                dst.executemany(f'INSERT INTO "{table}" ({names}) VALUES ({marks})', batch)
        except sqlite3.DatabaseError as exc:
            result.damaged.append(f"{table}: rows after the first damaged page ({exc})")
        return
    insert = f'INSERT INTO "{table}" (rowid, {names}) VALUES (?, {marks})'
    read = f'SELECT rowid, {names} FROM "{table}" WHERE rowid > ? ORDER BY rowid'
    after = -(2**63)
    while True:
        batch: list[tuple] = []
        try:
            # row by row: a failure part way keeps every row read before it
            for row in src.execute(read, (after,)):
                batch.append(row)
                if len(batch) >= BATCH:
                    dst.executemany(insert, batch)
                    after, batch = batch[-1][0], []
            dst.executemany(insert, batch)
            return
        except sqlite3.DatabaseError as exc:
            dst.executemany(insert, batch)
            if batch:
                after = batch[-1][0]
            resumed = _step_over(src, table, after)
            stop = f"rowid {resumed}" if resumed is not None else "the end"
            result.damaged.append(f"{table}: rowids after {after} up to {stop} ({exc})")
            if resumed is None:
                return
            after = resumed - 1


def _step_over(src: sqlite3.Connection, table: str, after: int) -> int | None:
    """The first rowid that reads again past a damaged stretch beginning after `after`."""
    step = 1
    while step <= MAX_STEP:
        try:
            row = src.execute(f'SELECT rowid FROM "{table}" WHERE rowid > ? ORDER BY rowid '
                              f'LIMIT 1', (after + step,)).fetchone()
        except sqlite3.DatabaseError:
            step *= 2
            continue
        if row is None:
            return None
        # a read from there works: come back towards `after` for what lies just past it
        return _first_readable(src, table, after, after + step, row[0])
    return None


def _first_readable(src: sqlite3.Connection, table: str, bad: int, good: int,
                    found: int) -> int:
    """Between a start that fails (`bad`) and one that reads (`good`, which found
    `found`), the smallest rowid that can be read: a bisection."""
    while good - bad > 1:
        middle = (bad + good) // 2
        try:
            row = src.execute(f'SELECT rowid FROM "{table}" WHERE rowid > ? ORDER BY rowid '
                              f'LIMIT 1', (middle,)).fetchone()
        except sqlite3.DatabaseError:
            bad = middle
            continue
        good, found = middle, row[0] if row is not None else found
    return found


def _finish(making: Path, source: Path, result: Recovered) -> None:
    """The schema version as the damaged store had it (its header keeps it even when its
    pages are damaged), WAL mode, and the new store's own check and row counts."""
    with open(source, "rb") as f:
        header = f.read(100)
    version = int.from_bytes(header[60:64], "big") if len(header) >= 64 else 0
    conn = sqlite3.connect(str(making), isolation_level=None)
    try:
        if version and not conn.execute("PRAGMA user_version").fetchone()[0]:
            conn.execute(f"PRAGMA user_version = {version}")
        conn.execute("PRAGMA journal_mode=WAL")
        tables = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
        for table in tables:
            n = conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]
            if table == "lost_and_found":
                result.lost_and_found = n
            else:
                result.rows[table] = n
        result.problems = problem_lines(r[0] for r in conn.execute("PRAGMA integrity_check(20)"))
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    for extra in ("-wal", "-shm"):
        making.with_name(making.name + extra).unlink(missing_ok=True)
