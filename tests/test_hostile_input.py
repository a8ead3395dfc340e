"""Hostile input through the real command line: configs and CSV imports that cannot be used
are refused with exit 2, FILE:LINE on every line of the message, and never a traceback.

Two sources of cases:
- a corpus, tests/cases/hostile/ (one file per kind of trouble; EXPECTED says the line and
  the text each must be refused with);
- hypothesis, which mutates a valid config byte by byte, puts hostile values into each
  duration, size and count field (the error must then be at that field's line), and builds
  CSV files of hostile cells. `make test` runs a few dozen examples of each;
  `make fuzz` (ENERGYD_FUZZ_EXAMPLES) runs thousands.

The commands run in-process through click's CliRunner on `energyd.cli.cli`, the same entry
point the console script calls: an exception that escapes the command is a failure here.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import traceback
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from energyd.cli import cli
from energyd.config.loader import MAX_BYTES

CASES = Path(__file__).parent / "cases" / "hostile"
EXAMPLES = int(os.environ.get("ENERGYD_FUZZ_EXAMPLES", "40"))
# No "explain" phase: on Python 3.11 it traces every line, and a YAML parse then takes minutes.
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
LOCATED = re.compile(r"^(?P<file>.+?):(?P<line>\d+): \S")
# what an import prints after its located rows
TRAILERS = re.compile(r"^(nothing was imported|\.\.\. and \d+ more bad rows)$")

METER = ("  - {name: m1, role: grid_import, driver: modbus, profile: eastron_sdm630, "
         "modbus: {host: 127.0.0.1, port: 1502}}\n")


@dataclass(frozen=True)
class Case:
    name: str
    line: int
    text: str


def corpus() -> list[Case]:
    cases = []
    for row in (CASES / "EXPECTED").read_text(encoding="utf-8").splitlines():
        if row and not row.startswith("#"):
            name, line, text = row.split("\t")
            cases.append(Case(name, int(line), text))
    return cases


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def refused(result: Result, file: str, *, lines: int | None = None) -> list[tuple[int, str]]:
    """Assert exit 2, no traceback and FILE:LINE on every message line (a line within the
    file's `lines` + 1 when given); return (line, message) of each."""
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError("".join(traceback.format_exception(result.exception)))
    assert result.exit_code == 2, (result.exit_code, result.output, result.stderr)
    assert "Traceback" not in result.stderr + result.output
    found = []
    for text in result.stderr.splitlines():
        if TRAILERS.match(text):
            continue
        m = LOCATED.match(text)
        assert m is not None, f"not FILE:LINE: {text!r}"
        assert m["file"] == file, text
        line = int(m["line"])
        assert line >= 1, text
        if lines is not None:
            assert line <= lines + 1, f"line {line} of a {lines}-line file: {text}"
        found.append((line, text[m.end() - 1:]))
    assert found, result.stderr
    return found


def accepted_or_refused(result: Result, file: str, data: bytes) -> list[tuple[int, str]]:
    if result.exit_code == 0 and result.exception is None:
        return []
    return refused(result, file, lines=data.count(b"\n") + 1)


def csv_config(tmp: Path, max_statement_days: int = 400) -> str:
    cfg = tmp / "energyd.yaml"
    cfg.write_text(f"storage: {{path: {tmp / 'energyd.db'}}}\ndevices:\n{METER}"
                   f"accounting: {{max_statement_days: {max_statement_days}}}\n")
    return str(cfg)


# --- the corpus ------------------------------------------------------------------------------


def test_every_file_of_the_corpus_has_its_expectation() -> None:
    files = {p.name for p in CASES.iterdir() if p.name != "EXPECTED"}
    assert files == {c.name for c in corpus()}


@pytest.mark.parametrize("case", corpus(), ids=lambda c: c.name)
def test_corpus_case_is_refused_at_its_line(case: Case, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the configs' relative store paths land here
    path = str(CASES / case.name)
    kind = case.name.split("-", 1)[0]
    if kind == "config":
        result = invoke("check-config", "-c", path)
    else:
        result = invoke("readings" if kind == "readings" else "invoices", "import",
                        "-c", csv_config(tmp_path), path)
    found = refused(result, path)
    assert found[0][0] == case.line, result.stderr
    assert case.text in found[0][1], result.stderr
    assert "s3cr3t-pw" not in result.stderr + result.output  # the URL cases' secret
    if kind != "config":
        assert "nothing was imported" in result.stderr


def test_a_file_larger_than_any_config_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    path.write_text("storage:\n  path: e.db\n" + "# padding\n" * (MAX_BYTES // 10 + 1))
    (line, message), = refused(invoke("check-config", "-c", str(path)), str(path))
    assert "larger than 4 MiB" in message
    assert line > 1


def test_a_missing_directory_that_can_be_created_passes(tmp_path: Path) -> None:
    cfg = tmp_path / "energyd.yaml"
    cfg.write_text(f"storage: {{path: {tmp_path / 'not' / 'yet' / 'energyd.db'}}}\n"
                   f"devices:\n{METER}")
    result = invoke("check-config", "-c", str(cfg))
    assert result.exit_code == 0, result.stderr
    assert not (tmp_path / "not").exists()  # checked, not created


def test_a_store_path_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "energyd.yaml"
    cfg.write_text(f"storage:\n  path: {tmp_path}\ndevices:\n{METER}")
    (line, message), = refused(invoke("check-config", "-c", str(cfg)), str(cfg))
    assert line == 2 and "is a directory" in message


# --- fuzzing: configs ------------------------------------------------------------------------

BASE = f"""\
site:
  name: plant
  timezone: Asia/Shanghai
storage:
  path: energyd.db
  flush_interval: 0.5s
  retention: 400d
  quota: 2GiB
devices:
{METER}  - name: air-c1
    driver: mqtt
    interval: 10s
    mqtt: {{topic: plant/air/c1, format: value, quantity: active_power_kw}}
mqtt:
  host: 127.0.0.1
  keepalive: 30
  session_expiry: 7d
  max_payload: 64KiB
alerts:
  rules:
    - {{name: spike, type: spike, devices: [m1], window: 15m}}
  channels:
    - {{type: webhook, url: 'https://hooks.example/energy', timeout: 5s, retries: 3}}
"""

HOSTILE_TOKENS = [
    b"\x00", b"\xff", b"\xef\xbb\xbf", b"\xed\xa0\x80", b"\x07", b"\t", b"\r", b"\xc2\x85",
    b"&a ", b"*a", b"[", b"]", b"{", b"}", b": ", b"- ", b"? ", b"\n", b"  ", b"'", b'"',
    b".nan", b".inf", b"-.inf", b"1e300", b"-1", b"0", b"9" * 5000, b"2024-02-30",
    b"!!binary ", b"!!python/object:os.system ", b"!!int ", b"!!float ", b"<<: ", b"---\n",
    b"...\n", b"%YAML 1.1\n", b"#", b"|", b">", b"0x", b"0o", b"\\", "\u2028".encode(),
    b"htps://u:pw@h", b"?token=x", b"[" * 60, b"{a: " * 40,
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(BASE.encode())
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["insert", "insert", "delete", "replace"]))
        if op == "insert":
            data[at:at] = draw(st.one_of(st.sampled_from(HOSTILE_TOKENS),
                                         st.binary(min_size=1, max_size=8)))
        elif op == "delete":
            del data[at:at + draw(st.integers(1, 40))]
        elif at < len(data):
            data[at] = draw(st.integers(0, 255))
    return bytes(data)


@FUZZ
@given(data=mutated())
@example(data=BASE.replace("0.5s", ".nan").encode())
@example(data=BASE.encode().replace(b"plant/air", b"plant\x00air"))
def test_fuzzed_configs_run_or_are_refused_at_a_line(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "energyd.yaml"
        path.write_bytes(data.replace(b"energyd.db", str(Path(tmp) / "e.db").encode()))
        accepted_or_refused(invoke("check-config", "-c", str(path)), str(path),
                            path.read_bytes())


# Each bounded field, the line BASE holds it on, and how a value is written into that line.
FIELDS = {
    "flush_interval": (6, "  flush_interval: {}"),
    "retention": (7, "  retention: {}"),
    "quota": (8, "  quota: {}"),
    "interval": (13, "    interval: {}"),
    "keepalive": (17, "  keepalive: {}"),
    "session_expiry": (18, "  session_expiry: {}"),
    "max_payload": (19, "  max_payload: {}"),
}


def yaml_scalar(value: object) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return ".nan"
        if math.isinf(value):
            return ".inf" if value > 0 else "-.inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a YAML double-quoted scalar: control characters escaped
    return str(value)


values = st.one_of(
    st.floats(), st.integers(min_value=-(10**30), max_value=10**30),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.builds(lambda n, u: f"{n}{u}", st.integers(-(10**12), 10**12),
              st.sampled_from(["", "ms", "s", "m", "h", "d", "w", "MB", "GiB", "TB", "x"])),
    st.text(max_size=30),
)


@FUZZ
@given(field=st.sampled_from(sorted(FIELDS)), value=values)
@example(field="flush_interval", value=0)
@example(field="quota", value=-1)
@example(field="interval", value=1e300)
@example(field="retention", value=math.nan)
@example(field="flush_interval", value="\n\x08")
@example(field="quota", value="\ud800")
def test_a_hostile_value_is_refused_at_its_own_line(field: str, value: object) -> None:
    line, template = FIELDS[field]
    lines = BASE.splitlines()
    assert lines[line - 1].lstrip().startswith(field + ":"), lines[line - 1]
    lines[line - 1] = template.format(yaml_scalar(value))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "energyd.yaml"
        path.write_text("\n".join(lines).replace("energyd.db", str(Path(tmp) / "e.db")) + "\n")
        result = invoke("check-config", "-c", str(path))
        if result.exit_code == 0:
            return
        found = refused(result, str(path))
        assert {at for at, _ in found} == {line}, result.stderr


# --- fuzzing: CSV imports --------------------------------------------------------------------

hostile_text = st.one_of(
    st.text(max_size=20), st.binary(max_size=12).map(lambda b: b.decode("latin-1")),
    st.sampled_from(["\x00", '"', '"a', "\r", "x" * 300, "nan", "-inf", "1e400", ";",
                     "9999-12-31T23:59:59-12:00", "0001-01-01T00:00:00+14:00"]),
)
times = st.datetimes(timezones=st.timezones()).map(lambda t: t.isoformat())
reading_cells = st.tuples(
    st.one_of(times, hostile_text), st.one_of(st.just("m1"), hostile_text),
    st.one_of(st.sampled_from(["active_power_kw", "active_energy_import_kwh"]), hostile_text),
    st.one_of(st.floats().map(repr), hostile_text))


def csv_bytes(header: bytes, rows: list[tuple[str, ...]], newline: bytes, extra: bytes) -> bytes:
    body = b"".join(b",".join(c.encode("utf-8", "surrogatepass") for c in row) + newline
                    for row in rows)
    return header + newline + body + extra


@FUZZ
@given(rows=st.lists(reading_cells, max_size=8), newline=st.sampled_from([b"\n", b"\r\n"]),
       header=st.sampled_from([b"time,device,quantity,value", b"\xef\xbb\xbftime,device,"
                               b"quantity,value", b"time,device", b"\xff\xfe"]),
       extra=st.one_of(st.just(b""), st.binary(max_size=16)))
def test_fuzzed_readings_imports_are_taken_or_refused_at_a_line(
        rows: list[tuple[str, ...]], newline: bytes, header: bytes, extra: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data = csv_bytes(header, rows, newline, extra)
        path = Path(tmp) / "readings.csv"
        path.write_bytes(data)
        accepted_or_refused(invoke("readings", "import", "-c", csv_config(Path(tmp)),
                                   str(path)), str(path), data)


dates = st.one_of(st.dates().map(str),
                  st.dates(min_value=date(2024, 1, 1), max_value=date(2026, 1, 1)).map(str),
                  times, hostile_text)
statement_cells = st.tuples(st.one_of(st.just("m1"), hostile_text), dates, dates,
                            st.one_of(st.floats().map(repr), hostile_text))


@FUZZ
@given(rows=st.lists(statement_cells, max_size=5), newline=st.sampled_from([b"\n", b"\r\n"]),
       extra=st.one_of(st.just(b""), st.binary(max_size=16)))
def test_fuzzed_statement_imports_are_taken_or_refused_at_a_line(
        rows: list[tuple[str, ...]], newline: bytes, extra: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data = csv_bytes(b"account,period_start,period_end,energy_kwh", rows, newline, extra)
        path = Path(tmp) / "statements.csv"
        path.write_bytes(data)
        # a short limit keeps an accepted statement's recompute small
        accepted_or_refused(invoke("invoices", "import", "-c",
                                   csv_config(Path(tmp), max_statement_days=40), str(path)),
                            str(path), data)


# --- conflicts: what is stored is never replaced, and never silently kept ---------------------


def test_a_reading_stored_with_another_value_is_a_conflict_not_already_present(
        tmp_path: Path) -> None:
    cfg = csv_config(tmp_path)
    first = tmp_path / "first.csv"
    first.write_text("time,device,quantity,value\n"
                     "2025-01-01T00:00:00+00:00,m1,active_power_kw,1.5\n"
                     "2025-01-01T00:00:10+00:00,m1,active_power_kw,2.5\n")
    assert invoke("readings", "import", "-c", cfg, str(first)).exit_code == 0
    again = invoke("readings", "import", "-c", cfg, str(first))
    assert again.exit_code == 0
    assert "0 new readings stored (2 already stored with the same value)" in again.output

    second = tmp_path / "second.csv"
    second.write_text("time,device,quantity,value\n"
                      "2025-01-01T00:00:20+00:00,m1,active_power_kw,3.5\n"
                      "2025-01-01T00:00:10+00:00,m1,active_power_kw,9.5\n")
    result = invoke("readings", "import", "-c", cfg, str(second))
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert result.exit_code == 0, result.output
    assert "1 rows have another value than the store holds" in result.stderr
    assert "2025-01-01T00:00:10+00:00 m1 active_power_kw: 9.5 (stored 2.5)" in result.stderr
    out = invoke("readings", "export", "-c", cfg, "--from", "2025-01-01T00:00:00+00:00",
                 "--to", "2025-01-02T00:00:00+00:00")
    # the stored value stands; the new row is taken
    assert [line.rsplit(",", 1)[0] for line in out.output.splitlines()[1:]] == [
        "2025-01-01T00:00:00.000+00:00,m1,active_power_kw,1.5",
        "2025-01-01T00:00:10.000+00:00,m1,active_power_kw,2.5",
        "2025-01-01T00:00:20.000+00:00,m1,active_power_kw,3.5"]
    listed = invoke("readings", "conflicts", "-c", cfg)
    assert listed.output.splitlines()[1:] == [
        "2025-01-01T00:00:10.000+00:00,m1,active_power_kw,9.5,2.5,imported"]


def test_two_values_for_one_time_in_one_file_refuse_it_at_the_second_line(
        tmp_path: Path) -> None:
    path = tmp_path / "readings.csv"
    path.write_text("time,device,quantity,value\n"
                    "2025-01-01T00:00:00+00:00,m1,active_power_kw,1\n"
                    "2025-01-01T00:00:10+00:00,m1,active_power_kw,2\n"
                    "2025-01-01T00:00:00+00:00,m1,active_power_kw,4\n")
    found = refused(invoke("readings", "import", "-c", csv_config(tmp_path), str(path)),
                    str(path))
    assert found == [(4, "m1 active_power_kw at 2025-01-01T00:00:00.000+00:00: value 4.0 "
                         "conflicts with 1.0 on line 2")]


def test_a_conflict_with_an_earlier_chunk_of_the_same_file_is_kept_as_a_conflict(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from energyd.store import csvio

    # across chunks the earlier row is in the store already: memory stays one chunk's
    monkeypatch.setattr(csvio, "CHUNK", 2)
    cfg = csv_config(tmp_path)
    path = tmp_path / "readings.csv"
    path.write_text("time,device,quantity,value\n"
                    "2025-01-01T00:00:00+00:00,m1,active_power_kw,1\n"
                    "2025-01-01T00:00:10+00:00,m1,active_power_kw,2\n"
                    "2025-01-01T00:00:20+00:00,m1,active_power_kw,3\n"
                    "2025-01-01T00:00:00+00:00,m1,active_power_kw,4\n")
    result = invoke("readings", "import", "-c", cfg, str(path))
    assert result.exit_code == 0, result.output
    assert "4.0 (stored 1.0)" in result.stderr


def test_a_duplicate_statement_says_whether_its_kwh_differ(tmp_path: Path) -> None:
    cfg = csv_config(tmp_path)
    header = "account,period_start,period_end,energy_kwh\n"
    stored = tmp_path / "jan.csv"
    stored.write_text(header + "m1,2025-01-01,2025-01-31,1000\n")
    assert invoke("invoices", "import", "-c", cfg, str(stored)).exit_code == 0
    (line, same), = refused(invoke("invoices", "import", "-c", cfg, str(stored)), str(stored))
    assert line == 2 and same.endswith("same kWh")
    other = tmp_path / "jan-corrected.csv"
    other.write_text(header + "m1,2025-01-01,2025-01-31,1200\n")
    (line, differs), = refused(invoke("invoices", "import", "-c", cfg, str(other)), str(other))
    assert "it holds 1000 kWh, this line 1200 kWh: the stored statement is kept" in differs


def test_the_statement_period_limit_is_configurable(tmp_path: Path) -> None:
    path = tmp_path / "year.csv"
    path.write_text("account,period_start,period_end,energy_kwh\nm1,2024-01-01,2025-03-31,9\n")
    (line, message), = refused(invoke("invoices", "import", "-c", csv_config(tmp_path), str(path)),
                               str(path))
    assert line == 2 and "longer than 400 days" in message
    longer = tmp_path / "longer"
    longer.mkdir()
    result = invoke("invoices", "import", "-c", csv_config(longer, max_statement_days=500),
                    str(path))
    assert result.exit_code == 0, result.stderr


# --- the bounded line reader, block by block ----------------------------------------------


@pytest.mark.parametrize("block", [1, 3, 7, 16, 64, 4096])
def test_lines_are_checked_and_numbered_across_blocks(
        block: int, monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from energyd.errors import LineProblems
    from energyd.store import csvio

    monkeypatch.setattr(csvio, "BLOCK", block)
    text = ("a,b\r\n"  # 1
            + "x" * 25 + "\n"  # 2: too long
            + "c,d\n"  # 3
            + "e\x00f\n"  # 4: NUL
            + "y" * 70 + "\n"  # 5: too long, over several blocks
            + "g,\udcff\n"  # 6: a byte that was not UTF-8
            + "\n"  # 7
            + '"h\ni",j\n'  # 8-9: a quoted field across lines
            + "z" * 21)  # 10: too long, no newline at the end
    fail = LineProblems("f.csv")
    records = list(csvio.csv_records(io.StringIO(text, newline="\n"), fail, max_line=20))
    assert [(p.line, p.message.split(":")[0].split(" holds")[0]) for p in fail.problems] == [
        (2, "the line is longer than 20 characters"), (4, "column 2"),
        (5, "the line is longer than 20 characters"), (6, "column 3"),
        (10, "the line is longer than 20 characters")]
    assert [(n, f) for n, f in records if f] == [(1, ["a", "b"]), (3, ["c", "d"]),
                                                 (9, ["h\ni", "j"])]


def test_a_store_directory_that_cannot_be_written_is_refused() -> None:
    """Run as an unprivileged user (root may write anywhere): as `nobody` through setpriv
    when the tests run as root, else as the current user under a read-only directory."""
    work = Path(tempfile.mkdtemp(prefix="energyd-unwritable-"))
    opened: list[tuple[Path, int]] = []
    try:
        if os.geteuid() == 0:
            # `nobody` must reach the interpreter and the package: a checkout in a private
            # directory (mktemp -d makes them 0700) is opened to it for the test's length
            for d in Path(sys.prefix).resolve().parents:
                mode = d.stat().st_mode
                if not mode & 0o001:
                    opened.append((d, mode))
                    d.chmod(mode | 0o005)
        locked = work / "locked"
        locked.mkdir()
        cfg = work / "energyd.yaml"
        cfg.write_text(f"site: {{name: plant}}\nstorage:\n  path: {locked / 'new' / 'e.db'}\n")
        command = [sys.executable, "-m", "energyd.cli", "check-config", "-c", str(cfg)]
        if os.geteuid() == 0:
            for p in (work, locked):
                p.chmod(0o755)  # readable, writable by root only
            cfg.chmod(0o644)
            command = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                       *command]
        else:
            locked.chmod(0o555)
        result = subprocess.run(command, capture_output=True, text=True, timeout=60,
                                cwd=work)
        assert result.returncode == 2, result.stdout + result.stderr
        assert result.stderr.startswith(f"{cfg}:3: storage.path: "), result.stderr
        assert f"the directory {locked} is not writable" in result.stderr
        assert "Traceback" not in result.stderr
    finally:
        for d, mode in reversed(opened):
            d.chmod(mode)
        (work / "locked").chmod(0o755)
        shutil.rmtree(work, ignore_errors=True)
