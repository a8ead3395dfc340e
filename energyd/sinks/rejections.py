"""Points a server refused for good become one alert episode per sink (rule
`sink_rejected`, device = the sink's name), resolved after an hour without rejections.

A forwarder only reports its rejections (`Outcome.rejections`); `RejectionEpisodes.observe`
turns each cycle's outcome into the episode. The daemon and `energyd forward` hand it to
the forwarder as its `report`."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from energyd.sinks.forwarder import Outcome
from energyd.store.sink_episodes import RULE
from energyd.store.sqlite import Store

REJECTED_RULE = RULE
REJECTED_QUIET_MS = 3600_000  # an episode of rejections ends after this long without one


class RejectionEpisodes:
    def __init__(self, sink: str, store: Store, *, metrics: Any = None,
                 now_ms: Callable[[], int] | None = None):
        self.sink = sink
        self._episodes = store.sink_episodes
        self._metrics = metrics
        self._now_ms = now_ms or (lambda: int(time.time() * 1000))
        self._open = self._episodes.open_episode(sink) is not None

    def observe(self, out: Outcome) -> None:
        for r in out.rejections:
            if self._episodes.record(self.sink, stream=r.stream, points=r.points,
                                     items=r.items, message=r.message, at_ms=self._now_ms()) \
                    and self._metrics is not None:
                self._metrics.alerts.labels(REJECTED_RULE).inc()
            self._open = True
        if self._open and not out.rejections:
            self._maybe_resolve()

    def _maybe_resolve(self) -> None:
        found = self._episodes.open_episode(self.sink)
        if found is None:
            self._open = False
            return
        now = self._now_ms()
        if now - found.detail.get("last_ms", 0) < REJECTED_QUIET_MS:
            return
        self._episodes.resolve(found.id, now)
        self._open = False
