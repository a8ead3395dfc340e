"""Load shapes for simulated plants: a working day, a working week, a little wander.

`load_factor(t)` is 1.0 at a weekday's full production and about 0.3 at night; weekends run
lighter. The wander is a sum of slow sines keyed by a seed, so it is deterministic: two
simulators with the same seed and clock agree, and a test can recompute any value.
"""

from __future__ import annotations

import math
from datetime import datetime, tzinfo

# Fraction of full load at each local hour of a working day (linear in between).
DAILY = (0.32, 0.30, 0.30, 0.30, 0.32, 0.40, 0.62, 0.85, 0.97, 1.00, 1.00, 0.98,
         0.86, 0.95, 1.00, 1.00, 0.98, 0.92, 0.78, 0.62, 0.50, 0.42, 0.36, 0.33)
# Scale of the production part on each weekday (Monday = 0).
WEEKLY = (1.0, 1.0, 1.0, 1.0, 0.97, 0.55, 0.25)
BASE = 0.30  # what runs around the clock: ventilation, compressors on standby, lighting


def daily_weekly(t: datetime, tz: tzinfo | None = None) -> float:
    local = t.astimezone(tz) if tz is not None else t
    h = local.hour + local.minute / 60 + local.second / 3600
    i = int(h) % 24
    frac = h - int(h)
    day = DAILY[i] + (DAILY[(i + 1) % 24] - DAILY[i]) * frac
    production = max(0.0, day - BASE)
    return BASE + production * WEEKLY[local.weekday()]


def wander(epoch_s: float, seed: int, depth: float = 0.04) -> float:
    """A deterministic wobble around 1.0 (about +-depth)."""
    s = seed * 0.7312
    return 1.0 + depth * (0.5 * math.sin(epoch_s / 437.0 + s)
                          + 0.3 * math.sin(epoch_s / 61.0 + 2.1 * s)
                          + 0.2 * math.sin(epoch_s / 3607.0 + 3.3 * s))


def load_factor(t: datetime, seed: int = 0, tz: tzinfo | None = None) -> float:
    return daily_weekly(t, tz) * wander(t.timestamp(), seed)
