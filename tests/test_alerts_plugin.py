"""A new alert rule type is one module and one registry line: nothing else in energyd learns
of it, yet the configuration takes its `type:` (and only its keys) and the engine runs its
hook. Shown with a small rule written here, registered in a fresh interpreter (the schema
assembles its union from the registry when it is first imported)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

LOW_POWER_FACTOR = '''
"""low_power_factor: a device's power factor below `minimum` (a capacitor bank gone)."""

from collections.abc import Iterable
from typing import Literal

from pydantic import Field

from energyd.alerts.rules import conditions as C
from energyd.alerts.rules.base import Feed, Rule, RuleContext, RuleOptions


class LowPowerFactorOptions(RuleOptions):
    type: Literal["low_power_factor"]
    minimum: float = Field(0.9, gt=0, le=1)


class LowPowerFactor(Rule):
    options: LowPowerFactorOptions

    def live_inputs(self, ctx: RuleContext) -> Iterable[tuple[str, str, Feed | None]]:
        return [(d, "power_factor", None) for d in ctx.devices(self.name)]

    def on_reading(self, ctx: RuleContext, device: str, t_ms: int, value: float,
                   active: bool) -> C.Verdict:
        # a shortfall below the minimum, in the band terms every rule uses
        return C.band(self.options.minimum - value, 0.0, self.options.hysteresis,
                      {"power_factor": value, "minimum": self.options.minimum})
'''

SCRIPT = '''
import sys
from datetime import UTC, datetime, timedelta

sys.path.insert(0, sys.argv[1])
import low_power_factor

from energyd.alerts.rules.registry import RULES

# the registry line
RULES["low_power_factor"] = (low_power_factor.LowPowerFactorOptions,
                             low_power_factor.LowPowerFactor)

from energyd.alerts.engine import AlertEngine
from energyd.config.loader import parse_config
from energyd.errors import ConfigError
from energyd.model import Reading
from energyd.store.sqlite import Store

devices = """
site: {name: plant-a, timezone: Asia/Shanghai}
storage: {path: %s/energyd.db}
devices:
  - {name: incomer-1, role: grid_import, driver: modbus, profile: eastron_sdm630,
     modbus: {host: 127.0.0.1}}
alerts:
  rules:
"""
try:
    parse_config(devices + "    - {name: pf, type: low_power_factor, limit: 3}\\n", "p.yaml")
except ConfigError as exc:
    print("refused:", exc)
config = parse_config(devices + "    - {name: pf, type: low_power_factor, minimum: 0.92}\\n",
                      "p.yaml")
t0 = datetime(2026, 6, 1, tzinfo=UTC)
with Store.open(config.storage.path) as store:
    engine = AlertEngine(config, store, now_ms=lambda: 0)
    events = []
    for i, pf in enumerate([0.95, 0.93, 0.85, 0.84, 0.96]):  # one poll a second
        events += engine.on_readings([Reading(t0 + timedelta(seconds=i), "incomer-1",
                                              "power_factor", pf)])
    for e in events:
        print("event:", e.kind, e.episode.rule, e.episode.device, e.episode.detail["type"])
'''


def test_a_new_rule_type_is_a_module_and_a_registry_line(tmp_path: Path) -> None:
    (tmp_path / "low_power_factor.py").write_text(textwrap.dedent(LOW_POWER_FACTOR))
    proc = subprocess.run([sys.executable, "-c", SCRIPT % tmp_path, str(tmp_path)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("refused: p.yaml:9: alerts.rules[0].limit: unknown key"), lines
    assert lines[1:] == ["event: start pf incomer-1 low_power_factor",
                         "event: end pf incomer-1 low_power_factor"], lines
