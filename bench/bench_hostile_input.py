"""Hostile input benchmark: what a refused CSV import costs, next to a harmless one.

    .venv/bin/python bench/bench_hostile_input.py [--line-mb 256] [--workdir DIR]

1. `energyd readings import` of a file whose second line is `--line-mb` MB long (no newline
   until its end): refused with FILE:LINE, reading at most energyd.store.csvio.MAX_LINE
   characters of it at a time.
2. `energyd invoices import` of a statement for 1971-01-01..2025-12-31: refused by its
   bounded period, before any hour of it is computed.

The ceiling printed beside each is the peak RSS of `energyd readings import` of a ten-row
valid file, measured in the same run: the hostile files must cost no more than that plus
64 MB (the import's chunk of rows and the interpreter's slack), whatever their size.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENERGYD = [sys.executable, "-m", "energyd.cli"]
MARGIN_MB = 64


def run(args: list[str]) -> tuple[int, float, float, str]:
    """(exit code, peak RSS MB, wall seconds, stderr's first line) of one energyd command."""
    start = time.perf_counter()
    proc = subprocess.Popen([*ENERGYD, *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return (proc.returncode, usage.ru_maxrss / 1024, time.perf_counter() - start,
            (err.strip().splitlines() or [""])[0][:100])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--line-mb", type=int, default=256)
    ap.add_argument("--workdir", type=Path, default=None)
    opts = ap.parse_args()
    work = Path(opts.workdir or tempfile.mkdtemp(prefix="energyd-bench-hostile-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        cfg = work / "energyd.yaml"
        cfg.write_text(f"storage: {{path: {work / 'energyd.db'}}}\n"
                       "devices:\n  - {name: m1, role: grid_import, driver: modbus, "
                       "profile: eastron_sdm630, modbus: {host: 127.0.0.1}}\n")
        good = work / "good.csv"
        good.write_text("time,device,quantity,value\n" + "".join(
            f"2025-01-01T00:00:{i:02d}+00:00,m1,active_power_kw,{i}\n" for i in range(10)))
        long_line = work / "long-line.csv"
        with long_line.open("w") as f:
            f.write("time,device,quantity,value\n2025-01-01T00:00:00+00:00,")
            block = "x" * 2**20
            for _ in range(opts.line_mb):
                f.write(block)
            f.write(",active_power_kw,1\n")
        century = work / "century.csv"
        century.write_text("account,period_start,period_end,energy_kwh\n"
                           "m1,1971-01-01,2025-12-31,1000000\n")

        code, base_mb, base_s, _ = run(["readings", "import", "-c", str(cfg), str(good)])
        assert code == 0, "the valid file was not imported"
        ceiling = base_mb + MARGIN_MB
        print(f"  ceiling: valid 10-row import  {base_mb:7.1f} MB peak RSS ({base_s:.2f} s); "
              f"target <= {ceiling:.1f} MB")
        status = 0
        for label, args in [
            (f"{opts.line_mb} MB line", ["readings", "import", "-c", str(cfg), str(long_line)]),
            ("1971-2025 statement", ["invoices", "import", "-c", str(cfg), str(century)]),
        ]:
            code, mb, s, first = run(args)
            ok = code == 2 and mb <= ceiling and "Traceback" not in first
            print(f"  {label:22s} exit {code}  {mb:7.1f} MB peak RSS  {s:6.2f} s  "
                  f"{'met' if ok else 'MISSED'}   {first}")
            status |= not ok
        return status
    finally:
        if opts.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
