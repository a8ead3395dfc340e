"""Named degraded states: what works, but not as it should, and why.

Any part of the daemon that notices trouble it can live with (the wall clock stepped, the
disk is full, a sink fails) enters a state under its own name with a reason, and clears it
when the trouble is over; a state may also lapse by itself after a while (a clock step is
worth showing for some minutes, not for ever). /health shows the states and says
"degraded" while any is on. The states only report: each owner logs its own entry and
recovery, once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class State:
    reason: str
    since: float  # wall time, for people
    until: float | None  # monotonic time it lapses at, None while its owner holds it


class Degraded:
    def __init__(self, *, monotonic: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time):
        self._states: dict[str, State] = {}
        self._monotonic, self._wall = monotonic, wall

    def enter(self, name: str, reason: str, *, lasts: float | None = None) -> bool:
        """Turn `name` on (or renew its reason); True if it was off. With `lasts` it turns
        itself off that many seconds from now."""
        now = self._monotonic()
        was = self._active(name, now)
        since = was.since if was is not None else self._wall()
        self._states[name] = State(reason, since, now + lasts if lasts is not None else None)
        return was is None

    def clear(self, name: str) -> bool:
        """Turn `name` off; True if it was on."""
        return self._states.pop(name, None) is not None

    def _active(self, name: str, now: float) -> State | None:
        state = self._states.get(name)
        if state is not None and state.until is not None and now >= state.until:
            del self._states[name]
            return None
        return state

    def active(self) -> dict[str, dict[str, Any]]:
        """name -> {"reason", "since"} of the states that are on."""
        now = self._monotonic()
        out = {}
        for name in list(self._states):
            state = self._active(name, now)
            if state is not None:
                out[name] = {"reason": state.reason, "since": round(state.since, 3)}
        return out

    def __bool__(self) -> bool:
        return bool(self.active())
