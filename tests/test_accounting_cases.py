"""Accounting cases as data: one folder per case under tests/cases/accounting/<name>/.

- `config.yaml`: a complete energyd config (storage.path is replaced with a temporary one;
  relative paths such as a factor table resolve in the case folder);
- `readings.csv`: `time,device,quantity,value` (as `energyd readings import` takes it);
- `statements.csv` (optional): supplier statements, as `energyd invoices import` takes them;
- `case.yaml`: `description:`, `windows:` a list of {from, to} recomputed in that order,
  optional `month:` with `expected_report.json`, a subset of the JSON report's fields
  (times with an offset; a date or a time without one is site time);
- `expected.csv`: `hour,device,mwh,source`, every row of the windows' hours; mwh to 1e-6.

Readings go in first, then the statements (their import recomputes their periods), then
the windows. Cases run in a fresh store each.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from energyd.accounting.energy import HOUR_MS
from energyd.accounting.storage import Accountant
from energyd.config.loader import load_config
from energyd.store import Store
from energyd.store.csvio import import_readings

CASES = Path(__file__).resolve().parent / "cases" / "accounting"
NAMES = sorted(p.name for p in CASES.iterdir() if (p / "case.yaml").is_file()) \
    if CASES.is_dir() else []


def _ms(text: Any, tz: tzinfo | None = None) -> int:
    """An instant: ISO 8601 with an offset; a date or a time without one is site time."""
    when = text if isinstance(text, datetime) else datetime.fromisoformat(
        str(text).replace("Z", "+00:00"))
    if when.tzinfo is None:
        if tz is None:
            raise ValueError(f"{text!r}: a time without an offset")
        when = when.replace(tzinfo=tz)
    return round(when.timestamp() * 1000)


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


def test_there_are_cases() -> None:
    assert NAMES, f"no case folders in {CASES}"


@pytest.mark.parametrize("name", NAMES)
def test_case(name: str, tmp_path: Path) -> None:
    folder = tmp_path / name
    shutil.copytree(CASES / name, folder)
    yaml = YAML(typ="rt")
    tree = yaml.load((folder / "config.yaml").read_text(encoding="utf-8"))
    tree.setdefault("storage", {})["path"] = str(tmp_path / "energyd.db")
    with open(folder / "config.yaml", "w", encoding="utf-8") as f:
        yaml.dump(tree, f)
    config = load_config(folder / "config.yaml")
    case = YAML(typ="safe").load((folder / "case.yaml").read_text(encoding="utf-8"))
    assert case.get("description"), f"{name}: case.yaml needs a description"
    tz = config.site.tz
    windows = [(_ms(w["from"], tz), _ms(w["to"], tz)) for w in case["windows"]]
    month = case.get("month")
    store = Store.open(config.storage.path)
    try:
        acc = Accountant(store, config)
        month_end = acc.month_bounds(str(month))[1] if month else 0
        now = max([b for _, b in windows] + [month_end]) + 24 * HOUR_MS
        with open(folder / "readings.csv", newline="", encoding="utf-8") as f:
            import_readings(store, f, str(folder / "readings.csv"))
        if (folder / "statements.csv").is_file():
            text = (folder / "statements.csv").read_text(encoding="utf-8")
            acc.import_statements(io.StringIO(text), str(folder / "statements.csv"), now)
        for a, b in windows:
            acc.recompute((a, b), now)
        got = {}
        for a, b in windows:
            for r in acc.rows(a, b):
                got[(r.hour, r.device)] = r
        with open(folder / "expected.csv", newline="", encoding="utf-8") as f:
            expected = {(_ms(r["hour"]), r["device"]): r for r in csv.DictReader(f)}
        problems = []
        for key in sorted(set(expected) | set(got)):
            hour = datetime.fromtimestamp(key[0] / 1000).astimezone().isoformat()
            e, g = expected.get(key), got.get(key)
            if e is None:
                problems.append(f"{hour} {key[1]}: computed ({g.mwh} MWh, {g.source}), "
                                "not expected")
            elif g is None:
                problems.append(f"{hour} {key[1]}: expected, not computed")
            elif abs(float(e["mwh"]) - g.mwh) > 1e-6 or e["source"] != g.source:
                problems.append(f"{hour} {key[1]}: expected {e['mwh']} MWh {e['source']}, "
                                f"got {g.mwh} MWh {g.source}")
        assert not problems, f"{name}: " + "\n".join(problems)
        if month and (folder / "expected_report.json").is_file():
            want = json.loads((folder / "expected_report.json").read_text(encoding="utf-8"))
            report = json.loads(json.dumps(acc.report(str(month), now), default=str))
            diffs = _subset(want, report)
            assert not diffs, f"{name}: " + "\n".join(diffs)
    finally:
        store.close()
