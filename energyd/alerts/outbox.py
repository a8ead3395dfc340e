"""Alert events not yet delivered, kept in the store.

A channel that talks to the network (webhook, MQTT) gets each event from the dispatcher
together with a `done` callback, called once the receiver has it (HTTP 2xx, the broker's
PUBACK) or has refused it for good (HTTP 4xx other than 408/429). Until then the event is a
row of `alert_outbox`; when the daemon starts, each channel is sent its rows again, oldest
first. An event can thus arrive twice (delivered, then the daemon stopped before the row was
deleted), never not at all; each carries its episode id and event for receivers that care.
Rows older than `max_age` are not sent any more: an alert days late is noise, and the
episode is in the store (and forwarded) either way.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from energyd.store.outbox import Payload
from energyd.store.sqlite import Store

log = logging.getLogger(__name__)

MAX_AGE_S = 24 * 3600


class Outbox:
    def __init__(self, store: Store, *, max_age: float = MAX_AGE_S,
                 now_ms: Callable[[], int] = lambda: round(time.time() * 1000)):
        self.store = store
        self.max_age_ms = round(max_age * 1000)
        self._now_ms = now_ms

    def add(self, channels: list[str], payloads: list[Payload]) -> list[dict[str, int]]:
        """Keep each payload for each of `channels`, all in one transaction; for each
        payload, channel -> row id."""
        return self.store.outbox.keep(channels, payloads, self._now_ms())

    def done(self, row: int) -> None:
        """The channel delivered the row's event (or it was refused for good)."""
        try:
            self.store.outbox.delivered(row)
        except Exception:
            # sent again at the next start: a duplicate, never a loss
            log.exception("alert outbox: cannot mark event %d delivered", row)

    def pending(self, channel: str) -> list[tuple[int, Payload]]:
        """The channel's undelivered events, oldest first; those past `max_age` are dropped
        (with a warning saying how many)."""
        stale = self.store.outbox.drop_older(channel, self._now_ms() - self.max_age_ms)
        if stale:
            log.warning("alert channel %s: %d undelivered events older than %g h dropped",
                        channel, stale, self.max_age_ms / 3_600_000)
        return self.store.outbox.undelivered(channel)

    def counts(self) -> dict[str, int]:
        """channel -> undelivered events."""
        return self.store.outbox.counts()

    def forget_channels_except(self, channels: Iterable[str]) -> int:
        """Drop the rows of channels no longer configured; returns how many."""
        return self.store.outbox.forget_channels_except(channels)
