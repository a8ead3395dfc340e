"""Degraded states: what keeps the running daemon from being wholly well, by name.

Any component sets a state with the reason and clears it when the cause has gone:

    ctx.degraded.set("disk_full", "/var/lib/energyd: database or disk is full")
    ctx.degraded.clear("disk_full")

A state is logged once when it begins (WARNING) and once when it ends (INFO, with how long
it lasted), never per attempt; a changed reason while it lasts is kept for /health without
another log line. /health reports `status: degraded` and every state with its reason and
since when; `energyd status` shows the same by asking the running daemon.

Names in use: `disk_full`, `store_failing` (the store's writer), `store_corrupt` (a read of
the store found a damaged database), `sink_failing` (a forwarder). A state several parts can
be in at once (`sink_failing`, per sink) is set with a `source`; it lasts while any of them is
in it, and its reason names each. Safe from any thread: the store's writer and the
forwarders set them from theirs.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime

log = logging.getLogger(__name__)


@dataclass
class State:
    reason: str
    since: float  # time.time() when it began
    since_monotonic: float


class Degraded:
    def __init__(self) -> None:
        self._states: dict[tuple[str, str], State] = {}
        self._lock = threading.Lock()

    def set(self, name: str, reason: str, *, source: str = "", quiet: bool = False) -> None:
        """Enter `name` (or update its reason). `quiet`: the caller logs entry and
        recovery itself (a forwarder does), so this adds no line."""
        with self._lock:
            state = self._states.get((name, source))
            if state is not None:
                state.reason = reason
                return
            self._states[(name, source)] = State(reason, time.time(), time.monotonic())
        if not quiet:
            log.warning("degraded: %s: %s", _label(name, source), reason)

    def clear(self, name: str, *, source: str = "", quiet: bool = False) -> None:
        with self._lock:
            state = self._states.pop((name, source), None)
        if state is not None and not quiet:
            log.info("recovered: %s after %.0f s", _label(name, source),
                     time.monotonic() - state.since_monotonic)

    def active(self, name: str) -> bool:
        with self._lock:
            return any(n == name for n, _ in self._states)

    def __bool__(self) -> bool:
        return bool(self._states)

    def snapshot(self) -> dict[str, dict[str, str]]:
        """name -> {"reason", "since"}, for /health."""
        merged: dict[str, dict[str, str]] = {}
        with self._lock:
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
