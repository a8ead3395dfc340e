"""Accounting cases on constructed data with known answers, one folder each under
tests/cases/accounting/<name>/:

- `config.yaml`: a complete energyd config (storage.path is replaced by a temporary one);
- `readings.csv`: `time,device,quantity,value`, as `energyd readings import` takes it;
- `statements.csv` (optional): as `energyd invoices import` takes it;
- `case.yaml`: `description:` (the fault class and the known answer), `windows:` a list of
  {from, to} recomputed in order (a time without an offset, or a date, is site time),
  optional `now:` (default: a day after the last window or the month), optional `month:`
  with `expected_report.json`, a subset of the JSON report's fields (numbers to 1e-6);
- `expected.csv`: `hour,device,mwh,source`; mwh compared to 1e-6; only the listed hours and
  devices are compared.

Each case runs three times on a fresh store: the listed windows in order, hour by hour as the
daemon runs, and one window over all of them. The three must give identical rows, and a
re-run must change nothing. energyd is driven through its public API (readings import,
statements import, recompute, rows), never SQL.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml

from energyd.accounting.energy import HOUR_MS
from energyd.accounting.service import Accountant
from energyd.config.loader import parse_config
from energyd.model import to_ms
from energyd.store import Store
from energyd.store.csvio import import_readings

CASES = Path(__file__).parent / "cases" / "accounting"
NAMES = sorted(p.name for p in CASES.iterdir() if (p / "case.yaml").exists()) \
    if CASES.exists() else []


def instant(value: Any, tz: tzinfo | None = None) -> int:
    """An instant: ISO 8601 with an offset; a date or a time without one is site time."""
    when = value if isinstance(value, datetime) else datetime.fromisoformat(
        str(value).replace("Z", "+00:00"))
    if when.tzinfo is None:
        if tz is None:
            raise ValueError(f"{value!r} needs a UTC offset")
        when = when.replace(tzinfo=tz)
    return to_ms(when)


def _subset(expected: Any, got: Any, path: str = "report") -> list[str]:
    """Where `got` departs from `expected` (dict keys missing from `expected` are ignored)."""
    if isinstance(expected, dict):
        if not isinstance(got, dict):
            return [f"{path}: expected a mapping, got {got!r}"]
        out = []
        for k, v in expected.items():
            if k not in got:
                out.append(f"{path}.{k}: missing")
            else:
                out += _subset(v, got[k], f"{path}.{k}")
        return out
    if isinstance(expected, list):
        if not isinstance(got, list) or len(got) != len(expected):
            return [f"{path}: expected {len(expected)} items, got {got!r}"]
        return [p for i, (a, b) in enumerate(zip(expected, got, strict=True))
                for p in _subset(a, b, f"{path}[{i}]")]
    if isinstance(expected, bool) or expected is None or isinstance(expected, str):
        return [] if expected == got else [f"{path}: expected {expected!r}, got {got!r}"]
    if isinstance(expected, int | float):
        ok = isinstance(got, int | float) and not isinstance(got, bool) \
            and abs(expected - got) <= 1e-6
        return [] if ok else [f"{path}: expected {expected!r}, got {got!r}"]
    return [] if expected == got else [f"{path}: expected {expected!r}, got {got!r}"]




def run_case(case: Path, tmp: Path, strategy: str, report: list[Any] | None = None
             ) -> list[dict[str, Any]]:
    """The case's rows computed by `strategy`; the month's JSON report appended to `report`
    when the case names a month."""
    spec = yaml.safe_load((case / "case.yaml").read_text(encoding="utf-8"))
    tree = yaml.safe_load((case / "config.yaml").read_text(encoding="utf-8"))
    tree.setdefault("storage", {})["path"] = str(tmp / "energyd.db")
    config = parse_config(yaml.safe_dump(tree), str(case / "config.yaml"), base_dir=case)
    tz = ZoneInfo(config.site.timezone)
    windows = [(instant(w["from"], tz), instant(w["to"], tz)) for w in spec["windows"]]
    lo, hi = min(a for a, _ in windows), max(b for _, b in windows)
    month = spec.get("month")
    store = Store.open(config.storage.path)
    try:
        month_end = Accountant(store, config).month_bounds(str(month))[1] if month else 0
        now = instant(spec["now"], tz) if "now" in spec else max(hi, month_end) + 24 * HOUR_MS
        names = {d.name for d in config.devices}
        with open(case / "readings.csv", newline="", encoding="utf-8") as f:
            import_readings(store, f, str(case / "readings.csv"), known_device=names.__contains__)
        acc = Accountant(store, config)
        if (case / "statements.csv").exists():
            with open(case / "statements.csv", newline="", encoding="utf-8") as f:
                acc.import_statements(f, str(case / "statements.csv"), now)
        if strategy == "windows":
            spans = windows
        elif strategy == "hourly":
            spans = [(h, h + HOUR_MS) for h in range(lo - lo % HOUR_MS, hi, HOUR_MS)]
        else:
            spans = [(lo, hi)]
        for span in spans:
            acc.recompute(span, now)
        again = acc.recompute((lo, hi), now)
        assert again.written == 0, f"{case.name} ({strategy}): a re-run changed " \
                                   f"{again.written} rows"
        if month and report is not None:
            report.append(json.loads(json.dumps(acc.report(str(month), now), default=str)))
        return [r.as_json() for r in acc.rows(0, 2**62)]
    finally:
        store.close()


def differences(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> list[str]:
    ka = {(r["device"], r["hour"]): r for r in a}
    kb = {(r["device"], r["hour"]): r for r in b}
    out = []
    for key in sorted(set(ka) | set(kb)):
        ra, rb = ka.get(key), kb.get(key)
        if ra != rb:
            brief = [None if r is None else (r["mwh"], r["source"],
                                              json.dumps(r["detail"], sort_keys=True)[:300])
                     for r in (ra, rb)]
            out.append(f"{key}: {brief[0]} != {brief[1]}")
    return out


@pytest.mark.parametrize("name", NAMES)
def test_case(name: str, tmp_path: Path) -> None:
    case = CASES / name
    results = {}
    reports: list[Any] = []
    for strategy in ("windows", "hourly", "whole"):
        (tmp_path / strategy).mkdir()
        results[strategy] = run_case(case, tmp_path / strategy, strategy,
                                     reports if strategy == "windows" else None)
    for other in ("hourly", "whole"):
        diff = differences(results["windows"], results[other])
        assert not diff, f"{name}: the listed windows and {other} disagree:\n" + \
            "\n".join(diff[:10])
    rows = {(r["device"], instant(r["hour"])): r for r in results["windows"]}
    problems = []
    with open(case / "expected.csv", newline="", encoding="utf-8") as f:
        for line in csv.DictReader(f):
            key = (line["device"], instant(line["hour"]))
            row = rows.get(key)
            if row is None:
                problems.append(f"{line['hour']} {line['device']}: no row")
                continue
            want = float(line["mwh"])
            if abs(row["mwh"] - want) > 1e-6 or row["source"] != line["source"]:
                problems.append(f"{line['hour']} {line['device']}: {row['mwh']} "
                                f"{row['source']}, expected {want} {line['source']}")
    assert not problems, f"{name}: " + "; ".join(problems)
    if (case / "expected_report.json").is_file():
        assert reports, f"{name}: expected_report.json needs `month:` in case.yaml"
        want = json.loads((case / "expected_report.json").read_text(encoding="utf-8"))
        diffs = _subset(want, reports[0])
        assert not diffs, f"{name}: " + "\n".join(diffs)


def test_cases_exist() -> None:
    assert len(NAMES) >= 10, NAMES


@pytest.mark.parametrize("name", ["dropout_zero_runs", "frozen_then_catch_up",
                                  "glitch_low_on_the_hour"])
def test_the_hourly_job_fed_as_readings_arrive_ends_with_the_same_rows(
        name: str, tmp_path: Path) -> None:
    """The daemon's way: readings arrive up to a few minutes past each hour and the hourly
    job runs then; a dropout or a stale stretch still open at one run is decided at a later
    one, and the hours end as a recompute of the whole span gives them."""
    case = CASES / name
    whole = run_case(case, tmp_path, "whole")
    spec = yaml.safe_load((case / "case.yaml").read_text(encoding="utf-8"))
    tree = yaml.safe_load((case / "config.yaml").read_text(encoding="utf-8"))
    tree["storage"]["path"] = str(tmp_path / "daemon.db")
    config = parse_config(yaml.safe_dump(tree), str(case / "config.yaml"), base_dir=case)
    tz = ZoneInfo(config.site.timezone)
    windows = [(instant(w["from"], tz), instant(w["to"], tz)) for w in spec["windows"]]
    lo, hi = min(a for a, _ in windows), max(b for _, b in windows)
    with open(case / "readings.csv", newline="", encoding="utf-8") as f:
        header, *lines = list(csv.reader(f))
    with Store.open(config.storage.path) as store:
        acc = Accountant(store, config)
        sent = 0
        for h in range(lo + HOUR_MS, hi + 2 * HOUR_MS, HOUR_MS):
            now = h + 5 * 60_000
            batch = []
            while sent < len(lines) and instant(lines[sent][0]) < now:
                batch.append(lines[sent])
                sent += 1
            text = ",".join(header) + "\n" + "".join(",".join(x) + "\n" for x in batch)
            import_readings(store, io.StringIO(text), "batch.csv")
            acc.run(now)
        got = [r.as_json() for r in acc.rows(lo, hi)]
    want = [r for r in whole if lo <= instant(r["hour"]) < hi]
    diff = differences(want, got)
    assert not diff, "\n".join(diff[:10])
