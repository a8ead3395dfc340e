"""stale: a device silent for longer than `multiple` x its interval, or its energy counter
standing still while its power readings add up to `stuck_kwh`."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from pydantic import Field

from energyd.alerts.rules import conditions as C
from energyd.alerts.rules.base import PERIODIC, Feed, Observation, Rule, RuleContext, RuleOptions

COUNTER = "active_energy_import_kwh"
POWER = "active_power_kw"


class StaleOptions(RuleOptions):
    type: Literal["stale"]
    multiple: float = Field(3.0, gt=0)
    stuck_kwh: float = Field(1.0, gt=0)


class Stale(Rule):
    options: StaleOptions
    reads_silence = True

    def __init__(self, options: StaleOptions):
        super().__init__(options)
        self._watches: dict[str, C.CounterWatch] = {}

    # --- live: only gathers the counter and the power ------------------------------------

    def live_inputs(self, ctx: RuleContext) -> Iterable[tuple[str, str, Feed | None]]:
        out: list[tuple[str, str, Feed | None]] = []
        for device in ctx.devices(self.name):
            watch = self._watches.get(device)
            if watch is None:
                watch = self._watches[device] = C.CounterWatch(
                    interval_s=ctx.interval(device), multiple=self.options.multiple,
                    stuck_kwh=self.options.stuck_kwh)
            out += [(device, COUNTER, watch.counter), (device, POWER, watch.power)]
        return out

    def on_reading(self, ctx: RuleContext, device: str, t_ms: int, value: float,
                   active: bool) -> C.Verdict | None:
        return None  # every input is a feed

    # --- periodic ------------------------------------------------------------------------

    def period_s(self, ctx: RuleContext) -> float | None:
        """A fraction of the shortest silence it waits for."""
        limits = [ctx.interval(d) * self.options.multiple for d in ctx.devices(self.name)]
        return max(0.2, min(60.0, min(limits) / 4)) if limits else None

    def periodic(self, ctx: RuleContext, now_ms: int | None) -> list[Observation]:
        now = now_ms if now_ms is not None else ctx.now_ms()
        o = self.options
        out = []
        for device in ctx.devices(self.name):
            at, last = ctx.silence(device, now_ms)
            quiet = C.silent(at, last, interval_s=ctx.interval(device), multiple=o.multiple,
                             hysteresis=o.hysteresis)
            watch = self._watches.get(device)
            stuck = watch.verdict(now) if watch is not None else C.HOLD
            out.append(self.observe(device, now, C.stale(quiet, stuck), PERIODIC))
        return out
