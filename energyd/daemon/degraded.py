"""Degraded states: what keeps the running daemon from being wholly well, by name.

Any component sets a state with the reason and clears it when the cause has gone:

    ctx.degraded.set("disk_full", "/var/lib/energyd: database or disk is full")
    ctx.degraded.clear("disk_full")

A state may also lapse by itself (`lasts`): a step of the wall clock is worth showing for
some minutes, not for ever. A state is logged once when it begins (WARNING) and once when it
ends (INFO, with how long it lasted), never per attempt; a changed reason while it lasts is
kept for /health without another log line. `quiet=True` is for an owner that logs its own
entry and recovery. /health reports `status: degraded` and every state with its reason and
since when; `energyd status` shows the same by asking the running daemon.

Names in use: `disk_full`, `store_failing` (the store's writer), `store_corrupt` (a read of
the store found a damaged database), `sink_failing` (a forwarder), `clock_stepped` and
`clock_suspect` (the clock watch). A state several parts can be in at once (`sink_failing`,
per sink) is set with a `source`; it lasts while any of them is in it, and its reason names
each. Safe from any thread: the store's writer and the forwarders set them from theirs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

log = logging.getLogger(__name__)


@dataclass
class State:
    reason: str
    since: float  # wall time when it began, for people
    since_monotonic: float
    until: float | None  # monotonic time it lapses at; None while its owner holds it


class Degraded:
    def __init__(self, *, monotonic: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self._states: dict[tuple[str, str], State] = {}
        self._lock = threading.Lock()
        self._monotonic, self._wall = monotonic, wall

    def set(self, name: str, reason: str, *, source: str = "", quiet: bool = False,
            lasts: float | None = None) -> bool:
        """Enter `name` (or update its reason); True if it was not on. With `lasts` it turns
        itself off that many seconds from now."""
        now = self._monotonic()
        until = now + lasts if lasts is not None else None
        with self._lock:
            state = self._live((name, source), now)
            if state is not None:
                state.reason, state.until = reason, until
                return False
            self._states[(name, source)] = State(reason, self._wall(), now, until)
        if not quiet:
            log.warning("degraded: %s: %s", _label(name, source), reason)
        return True

    def clear(self, name: str, *, source: str = "", quiet: bool = False) -> bool:
        """Turn `name` off; True if it was on."""
        with self._lock:
            state = self._live((name, source), self._monotonic())
            if state is not None:
                del self._states[(name, source)]
        if state is not None and not quiet:
            log.info("recovered: %s after %.0f s", _label(name, source),
                     self._monotonic() - state.since_monotonic)
        return state is not None

    def _live(self, key: tuple[str, str], now: float) -> State | None:
        """The state under `key`, unless it has lapsed (then it is gone); under the lock."""
        state = self._states.get(key)
        if state is not None and state.until is not None and now >= state.until:
            del self._states[key]
            return None
        return state

    def _lapse(self) -> None:
        now = self._monotonic()
        for key in list(self._states):
            self._live(key, now)

    def active(self, name: str) -> bool:
        with self._lock:
            self._lapse()
            return any(n == name for n, _ in self._states)

    def __bool__(self) -> bool:
        with self._lock:
            self._lapse()
            return bool(self._states)

    def snapshot(self) -> dict[str, dict[str, str]]:
        """name -> {"reason", "since"}, for /health."""
        merged: dict[str, dict[str, str]] = {}
        with self._lock:
            self._lapse()
            for (name, source), s in sorted(self._states.items()):
                since = datetime.fromtimestamp(s.since, UTC).isoformat(timespec="seconds")
                reason = f"{source}: {s.reason}" if source else s.reason
                if name in merged:
                    merged[name]["reason"] += f"; {reason}"
                    merged[name]["since"] = min(merged[name]["since"], since)
                else:
                    merged[name] = {"reason": reason, "since": since}
        return merged


def _label(name: str, source: str) -> str:
    return f"{name} ({source})" if source else name
