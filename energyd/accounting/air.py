"""Hourly specific power of compressed air: kWh per m3 of free air, as kW per m3/min.

Specific power is what compressor people compare stations by (lower is better): the
average electrical power over the average free-air delivery. Over one hour,

    specific_power [kW / (m3/min)] = kWh / (m3 / 60) = 60 * kWh / m3

Pure functions over plain samples (epoch ms, value); no clock, no store.

* Energy comes from the cumulative counter (active_energy_import_kwh) interpolated at the
  hour's boundaries, summing only increases (a reset contributes nothing and is flagged).
  Without a usable counter it is the integral of active_power_kw.
* Free air is the integral of flow_m3_min (trapezoids between samples).
* Samples further apart than `max_gap_ms` are not bridged: that time is uncovered.
* `loaded_share` is the share of the observed time the compressor was loaded (state 2;
  each state sample holds until the next, for at most max_gap_ms).
* specific_power is NULL (None) when no air was delivered, or when energy or flow covers
  less than `MIN_COVERAGE` of the hour: a ratio of two partial figures would mislead.

A station's row sums its compressors' kWh and m3 and takes the ratio of the sums (never
the mean of the ratios); its loaded_share is the mean over the compressors that report.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from energyd.model import HOUR_MS

MIN_COVERAGE = 0.9
LOADED = 2

Samples = Sequence[tuple[int, float]]  # (epoch ms, value), ordered by time


@dataclass(frozen=True)
class AirHour:
    device: str
    hour_ms: int
    kwh: float
    m3: float
    specific_power: float | None  # kW per m3/min
    loaded_share: float | None
    detail: dict[str, Any] = field(default_factory=dict)


def specific_power(kwh: float, m3: float) -> float | None:
    """kW per m3/min from energy and free air over the same time; None without air."""
    if m3 <= 1e-9:
        return None
    return 60.0 * kwh / m3


def _segments(samples: Samples, start: int, end: int, max_gap: int):
    """(t0, v0, t1, v1) pieces of the linear interpolation, clipped to [start, end)."""
    for (t0, v0), (t1, v1) in zip(samples, samples[1:], strict=False):
        if t1 <= start or t0 >= end or t1 - t0 > max_gap or t1 <= t0:
            continue
        a, b = max(t0, start), min(t1, end)
        va = v0 + (v1 - v0) * (a - t0) / (t1 - t0)
        vb = v0 + (v1 - v0) * (b - t0) / (t1 - t0)
        yield a, va, b, vb


def integrate(samples: Samples, start: int, end: int, max_gap: int) -> tuple[float, float]:
    """Integral of a per-minute or per-hour gauge over [start, end) in value x ms, and the
    covered share of the window."""
    total = covered = 0.0
    for a, va, b, vb in _segments(samples, start, end, max_gap):
        total += (va + vb) / 2 * (b - a)
        covered += b - a
    return total, covered / (end - start)


def counter_delta(samples: Samples, start: int, end: int,
                  max_gap: int) -> tuple[float, float, int]:
    """Increase of a cumulative counter over [start, end): (sum of increases, covered
    share, number of decreases seen)."""
    total = covered = 0.0
    resets = 0
    for a, va, b, vb in _segments(samples, start, end, max_gap):
        covered += b - a
        if vb >= va:
            total += vb - va
        else:
            resets += 1
    return total, covered / (end - start), resets


def held_share(samples: Samples, start: int, end: int, max_gap: int,
               wanted: float) -> tuple[float | None, float]:
    """Share of the observed time a state held `wanted` (each sample holds until the next,
    at most max_gap); and the observed share of the window."""
    observed = hit = 0.0
    for i, (t0, v0) in enumerate(samples):
        t1 = samples[i + 1][0] if i + 1 < len(samples) else t0 + max_gap
        t1 = min(t1, t0 + max_gap)
        a, b = max(t0, start), min(t1, end)
        if b <= a:
            continue
        observed += b - a
        if v0 == wanted:
            hit += b - a
    if observed <= 0:
        return None, 0.0
    return hit / observed, observed / (end - start)


def compressor_hour(device: str, hour_ms: int, *, energy: Samples = (), power: Samples = (),
                    flow: Samples = (), state: Samples = (),
                    max_gap_ms: int = 900_000) -> AirHour | None:
    """One compressor's hour starting at `hour_ms`; None when nothing was measured."""
    start, end = hour_ms, hour_ms + HOUR_MS
    detail: dict[str, Any] = {}
    kwh, e_cov, resets = counter_delta(energy, start, end, max_gap_ms)
    if e_cov > 0:
        detail["energy"] = "counter"
        if resets:
            detail["counter_resets"] = resets
    else:
        kw_ms, e_cov = integrate(power, start, end, max_gap_ms)
        kwh = kw_ms / HOUR_MS
        if e_cov > 0:
            detail["energy"] = "power"
    m3_min_ms, f_cov = integrate(flow, start, end, max_gap_ms)
    m3 = m3_min_ms / 60_000
    loaded, s_cov = held_share(state, start, end, max_gap_ms, LOADED)
    if e_cov <= 0 and f_cov <= 0 and s_cov <= 0:
        return None
    detail["coverage"] = {"energy": round(e_cov, 4), "flow": round(f_cov, 4),
                          "state": round(s_cov, 4)}
    sp = specific_power(kwh, m3)
    if sp is not None and (e_cov < MIN_COVERAGE or f_cov < MIN_COVERAGE):
        detail["specific_power"] = "incomplete hour"
        sp = None
    return AirHour(device, hour_ms, kwh, m3, sp, loaded, detail)


def station_hour(station: str, hour_ms: int, members: Sequence[str],
                 rows: Sequence[AirHour]) -> AirHour | None:
    """The station's hour from its compressors' rows; None when none of them reported."""
    if not rows:
        return None
    kwh = sum(r.kwh for r in rows)
    m3 = sum(r.m3 for r in rows)
    shares = [r.loaded_share for r in rows if r.loaded_share is not None]
    reported = {r.device for r in rows}
    missing = [m for m in members if m not in reported]
    complete = not missing and all(
        r.detail.get("coverage", {}).get("energy", 0) >= MIN_COVERAGE
        and r.detail.get("coverage", {}).get("flow", 0) >= MIN_COVERAGE for r in rows)
    sp = specific_power(kwh, m3)
    detail: dict[str, Any] = {"compressors": sorted(reported)}
    if missing:
        detail["missing"] = missing
    if sp is not None and not complete:
        detail["specific_power"] = "incomplete hour"
        sp = None
    return AirHour(station, hour_ms, kwh, m3, sp,
                   sum(shares) / len(shares) if shares else None, detail)
