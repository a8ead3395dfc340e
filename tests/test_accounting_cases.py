"""Accounting cases on constructed data with known answers, one folder each under
tests/cases/accounting/<name>/:

- `config.yaml`: a complete energyd config (storage.path is replaced by a temporary one);
- `readings.csv`: `time,device,quantity,value`, as `energyd readings import` takes it;
- `statements.csv` (optional): as `energyd invoices import` takes it;
- `case.yaml`: `description:` (the fault class and the known answer), `windows:` a list of
  {from, to} recomputed in order, optional `now:` (default: a day after the last window);
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
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from energyd.accounting.energy import HOUR_MS
from energyd.accounting.storage import Accountant
from energyd.config.loader import parse_config
from energyd.model import to_ms
from energyd.store import Store
from energyd.store.csvio import import_readings

CASES = Path(__file__).parent / "cases" / "accounting"
NAMES = sorted(p.name for p in CASES.iterdir() if (p / "case.yaml").exists()) \
    if CASES.exists() else []


def instant(value: Any) -> int:
    when = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    if when.tzinfo is None:
        raise ValueError(f"{value!r} needs a UTC offset")
    return to_ms(when)


def run_case(case: Path, tmp: Path, strategy: str) -> list[dict[str, Any]]:
    spec = yaml.safe_load((case / "case.yaml").read_text(encoding="utf-8"))
    windows = [(instant(w["from"]), instant(w["to"])) for w in spec["windows"]]
    tree = yaml.safe_load((case / "config.yaml").read_text(encoding="utf-8"))
    tree.setdefault("storage", {})["path"] = str(tmp / "energyd.db")
    config = parse_config(yaml.safe_dump(tree), str(case / "config.yaml"), base_dir=case)
    lo, hi = min(a for a, _ in windows), max(b for _, b in windows)
    now = instant(spec["now"]) if "now" in spec else hi + 24 * HOUR_MS
    store = Store.open(config.storage.path)
    try:
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
    for strategy in ("windows", "hourly", "whole"):
        (tmp_path / strategy).mkdir()
        results[strategy] = run_case(case, tmp_path / strategy, strategy)
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
    windows = [(instant(w["from"]), instant(w["to"])) for w in spec["windows"]]
    lo, hi = min(a for a, _ in windows), max(b for _, b in windows)
    tree = yaml.safe_load((case / "config.yaml").read_text(encoding="utf-8"))
    tree["storage"]["path"] = str(tmp_path / "daemon.db")
    config = parse_config(yaml.safe_dump(tree), str(case / "config.yaml"), base_dir=case)
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
