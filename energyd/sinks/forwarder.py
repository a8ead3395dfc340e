"""Store-and-forward to one InfluxDB sink: cursors, chunks, backoff, bisection, rate.

The store is the buffer. A forwarder reads what its cursors have not passed, writes it as
line protocol through its transport, and moves a cursor only after the server acknowledged
the chunk (2xx), in one store transaction with the chunk's rejections. So a crash, a restart
or an outage of days loses nothing; at worst a chunk is written twice, which overwrites
the same points (same measurement, tags and time).

Streams and their cursors (table sink_cursors, keyed by the sink's name)
    readings       readings.id: every reading with an id <= it has been acknowledged
    rollups        rollups.seq      \
    alerts         alerts.seq        } change sequence: a recomputed row gets a new seq and
    air_hourly     air_hourly.seq   /  is sent again
    readings.gap   } only while a backlog drains (below)
    readings.live  }

Newest first, backlog at a bounded rate. When more than two backlog chunks of readings are
unsent (an outage, a slow link; a backlog chunk is one second's worth at
`max_points_per_second`, or `chunk_size` points without a rate), the forwarder opens a
*gap*: it records the id where the newest chunk's worth starts as both `readings.gap` (G)
and `readings.live` (L). From then on each cycle sends a chunk of the live tail (ids
after L, so dashboards stay current) and, as the rate limit allows, chunks of the backlog
(ids in (H, G], H being the `readings` cursor). Sent
are exactly the ids <= H and the ids in (G, L]; the invariant is that every reading falls
in one of these ranges before its cursor moves past it, so each is sent at least once. When
H reaches G the two ranges meet: H jumps to L and the gap is closed, in one transaction.
`readings` stays the lowest unsent position, which is what retention relies on (it never
deletes a reading above any sink's `readings` cursor). Store.backlog counts both ranges.

`max_points_per_second` bounds the backlog lane only (the live tail is the plant's own
rate); each backlog chunk holds at most one second's worth of points. Unbounded, the
backlog lane reads and encodes chunk k+1 while chunk k is in flight (one write at a time,
cursors committed in order), for a second at a time before the other lanes get their turn.

Replies (transport.py): a retryable failure (connection, 5xx, 429, auth, missing database)
stops the cycle; the cursors stay and the forwarder waits with exponential backoff and
jitter, at least Retry-After (energyd.retry). A SinkRejected (400 field type conflict,
413...) splits the chunk in halves until the refused points are found; they go to the
store's `rejected` table with the server's message, are counted (energyd_sink_rejected)
and reported in the cycle's Outcome (`rejections`), which the forwarder hands to its
`report` callable: the daemon turns them into an alert episode (daemon/forwarding.py).

The forwarder reads the store through its streams (store/streams.py) and moves its own
cursors; it knows no table and no SQL, and depends otherwise on its encoder and transport.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from energyd.errors import EnergydError, SinkRejected, SinkRetryable
from energyd.retry import Backoff, backoff_delay
from energyd.sinks.lineprotocol import Encoder, Point, body
from energyd.sinks.transport import Transport
from energyd.store.sqlite import AIR, ALERTS, READINGS, ROLLUPS, Backlog, Store
from energyd.store.streams import STORE_ERRORS, TOP, Streams, TableStream

log = logging.getLogger(__name__)

# the forwarder's own cursors beside one per stream: what they mean is said here (`unsent`)
GAP = "readings.gap"
LIVE = "readings.live"

__all__ = ["GAP", "LIVE", "Forwarder", "Outcome", "Rejection", "backlog", "backoff_delay"]


def unsent(streams: Streams, positions: dict[str, int], stream: str) -> Backlog:
    """The backlog of `stream` for a sink whose cursors are `positions`: the readings in
    (readings, readings.gap] and after readings.live while a gap is open, else after
    readings; the rows of a table after its cursor."""
    if stream != READINGS:
        return streams.table(stream).pending(positions.get(stream, 0))
    head = positions.get(READINGS, 0)
    if GAP in positions and LIVE in positions:
        return streams.readings.pending([(head, positions[GAP]), (positions[LIVE], TOP)])
    return streams.readings.pending([(head, TOP)])


def backlog(store: Store, sink: str, stream: str = READINGS) -> Backlog:
    """What the sink named `sink` has not sent yet of `stream`, from its cursors."""
    return unsent(Streams(store), store.cursors.positions(sink), stream)


@dataclass(frozen=True)
class Rejection:
    """Points of one stream the server refused for good in one chunk."""

    stream: str
    points: int
    items: int
    message: str  # the server's (redacted) message for the last of them


@dataclass
class Outcome:
    """What one cycle did: items acknowledged and rejected, and when to look again."""

    sent: int = 0
    rejected: int = 0
    wait: float = 0.0
    rejections: list[Rejection] = field(default_factory=list)


class Forwarder:
    """Forwards one store to one sink. Synchronous: the daemon runs it in a thread.

    Arguments (keyword-only after the first three):
      name                  the sink's name: keys its cursors, rejections and metrics
      store, transport      where rows come from and where they go
      encoder               lineprotocol.Encoder with the site's tags
      chunk_size            points per write, at most
      max_points_per_second the backlog's drain rate (None: as fast as the server takes it)
      interval              seconds between looks once caught up
      backoff_max           cap of the delay between failed attempts
      metrics               energyd.daemon.metrics.Metrics or None
      report                called with each cycle's Outcome (its rejections become an
                            alert episode: daemon/forwarding.py)
    """

    def __init__(self, name: str, store: Store, transport: Transport, *, encoder: Encoder,
                 chunk_size: int = 5000, max_points_per_second: float | None = None,
                 interval: float = 1.0, backoff_max: float = 300.0, metrics: Any = None,
                 report: Callable[[Outcome], None] | None = None):
        if chunk_size < 1:
            raise ValueError("chunk_size must be at least 1")
        if max_points_per_second is not None and max_points_per_second <= 0:
            raise ValueError("max_points_per_second must be positive")
        self.name = name
        self.store = store
        self.streams = Streams(store)
        self.transport = transport
        self.encoder = encoder
        self.chunk_size = chunk_size
        self.rate = max_points_per_second
        self.interval = interval
        self.backoff_max = backoff_max
        self.metrics = metrics
        self.report = report
        self._pos = store.cursors.positions(name)
        # readings per point (quantities per poll): sizes the reads, learnt from each chunk
        self._ratio = self.streams.readings.readings_per_poll()
        self._names: dict[int, tuple[str, str]] = {}  # series id -> (device, quantity)
        # one write in flight while the next chunk is read and encoded
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"energyd[{name}.write]")
        self._next_backlog = 0.0  # monotonic time the rate limit lets the next backlog chunk go
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._backoff = Backoff(cap=backoff_max)
        self.last_error: str | None = None
        self.last_success: float | None = None

    # --- positions --------------------------------------------------------------------------

    def position(self, stream: str) -> int:
        return self._pos.get(stream, 0)

    @property
    def gap(self) -> tuple[int, int] | None:
        """(G, L) while the live tail goes ahead of a backlog, else None."""
        if GAP in self._pos and LIVE in self._pos:
            return self._pos[GAP], self._pos[LIVE]
        return None

    def _commit(self, positions: dict[str, int | None],
                rejected: Sequence[tuple[str, int, str]] = ()) -> None:
        self.store.cursors.commit(self.name, positions, rejected)
        for stream, value in positions.items():
            if value is None:
                self._pos.pop(stream, None)
            else:
                self._pos[stream] = value

    def backlog(self, stream: str = READINGS) -> Backlog:
        """What this sink has not sent yet of `stream`."""
        return unsent(self.streams, self._pos, stream)

    # --- one cycle ----------------------------------------------------------------------------

    def step(self) -> Outcome:
        """One cycle: a chunk of the live tail (while a backlog drains), the oldest unsent
        readings for up to a second as the rate allows, then a chunk each of rollups,
        alerts and air_hourly. Raises SinkRetryable when the server cannot take a chunk
        (what was acknowledged before stays acknowledged)."""
        out = Outcome(wait=self.interval)
        done = False
        try:
            self._maybe_open_gap()
            if self.gap is not None:
                self._readings_live(out)
            self._readings_head(out)
            for table in self.streams.tables():
                self._table(table, out)
            done = True
        finally:
            # what was refused before a failure is reported all the same
            if self.report is not None and (done or out.rejections):
                self.report(out)
        self.last_success = time.time()
        return out

    def _points_wanted(self, backlog: bool) -> int:
        if backlog and self.rate is not None:
            return max(1, min(self.chunk_size, math.ceil(self.rate)))
        return self.chunk_size

    def _readings_limit(self, points: int) -> int:
        return max(1, math.ceil(points * self._ratio))

    def _maybe_open_gap(self) -> None:
        if self.gap is not None:
            return
        head = self.position(READINGS)
        # one backlog chunk: a second's worth at the rate, or a whole chunk without one
        chunk = self._readings_limit(self._points_wanted(True))
        readings = self.streams.readings
        if readings.count_after(head, at_least=2 * chunk + 1) <= 2 * chunk:
            return
        start = readings.position_back(chunk, head)  # the live tail: the newest chunk
        self._commit({GAP: start, LIVE: start})
        log.info("%s: %d readings to catch up; the newest go first, the backlog follows%s",
                 self.name, readings.count_after(head),
                 f" at up to {self.rate:g} points/s" if self.rate else "")

    def _readings_live(self, out: Outcome) -> None:
        _, live = self.gap  # type: ignore[misc]
        limit = self._readings_limit(self.chunk_size)
        rows, end, more = self.streams.readings.after(live, limit)
        if end > live:
            points = self._encode(rows)
            self._finish(READINGS, points, self._write(points), {LIVE: end}, out, (live, end))
            if self.rate is not None:
                # the live tail never waits, but what it sends counts against the rate, so
                # a big import arriving while a backlog drains slows the backlog instead of
                # adding to it
                now = time.monotonic()
                self._next_backlog = max(now, self._next_backlog) + len(points) / self.rate
            elif more:
                out.wait = 0.0

    def _encode(self, rows: list[tuple]) -> list[Point]:
        try:
            points = self.encoder.readings(rows, self._names)
        except KeyError:  # a series created since the names were read
            self._names.update(self.streams.readings.series_names())
            points = self.encoder.readings(rows, self._names)
        if points:
            self._ratio = 0.7 * self._ratio + 0.3 * (len(rows) / len(points))
        return points

    def _head_chunk(self, head: int) -> tuple[list[tuple], dict[str, int | None], int, bool] | None:
        """The oldest unsent readings after `head`: (rows, the positions they move the
        cursors to, the last id they cover, whether more may follow)."""
        gap = self.gap
        upto = gap[0] if gap is not None else TOP
        span = self._readings_limit(self._points_wanted(True))
        rows, end, more = self.streams.readings.after(head, span, upto=upto)
        if gap is not None and not more:
            # the backlog is used up: (H, G] and (G, L] meet, everything <= L is sent
            return rows, {READINGS: gap[1], GAP: None, LIVE: None}, end, False
        if end == head:
            return None
        return rows, {READINGS: end}, end, more

    def _readings_head(self, out: Outcome) -> None:
        """Send the oldest unsent readings, chunk after chunk for up to a second (then the
        live tail and the other streams get their turn). Chunk k+1 is read, encoded and
        queued behind chunk k while k is in flight, so the server never waits for the
        cursor's commit; one write at a time, and a cursor only ever moves over an
        acknowledged chunk, in order (should k fail, k+1 is sent again with it later)."""
        deadline = time.monotonic() + 1.0
        head = self.position(READINGS)
        pending: tuple[Future[list[tuple[Point, str]]], list[Point], dict, tuple] | None = None
        queued = None
        try:
            while True:
                chunk = None
                now = time.monotonic()
                if self.rate is not None and now < self._next_backlog:
                    out.wait = min(out.wait, self._next_backlog - now)
                elif now < deadline:
                    chunk = self._head_chunk(head)
                else:
                    out.wait = 0.0  # the second is up; more is waiting
                if chunk is not None:
                    # the body is joined here, so the writing thread needs the GIL only to
                    # send it and to read the reply
                    rows, positions, end, more = chunk
                    points = self._encode(rows)
                    if self.rate is not None:
                        self._next_backlog = (max(now, self._next_backlog)
                                              + len(points) / self.rate)
                    queued = (self._pool.submit(self._write, points, body(points)), points,
                              positions, (head, end))
                if pending is not None:
                    future, done_points, done_positions, span = pending
                    pending = None
                    self._finish(READINGS, done_points, future.result(), done_positions, out,
                                 span)
                pending, queued = queued, None
                if pending is None:
                    return
                if not more:
                    future, points, positions, span = pending
                    pending = None
                    self._finish(READINGS, points, future.result(), positions, out, span)
                    if GAP in positions:
                        log.info("%s: backlog forwarded; following the live readings again",
                                 self.name)
                    return
                head = end
        finally:
            for left in (pending, queued):
                if left is not None:
                    # something failed while this chunk was in flight: let the write end,
                    # and leave the cursor where it is (the chunk is sent again)
                    with contextlib.suppress(Exception):
                        left[0].result()

    def _table(self, table: TableStream, out: Outcome) -> None:
        stream = table.name
        chunk = table.after(self.position(stream), self.chunk_size)
        if not chunk.rows:
            return
        encode = {ROLLUPS: self.encoder.rollups, ALERTS: self.encoder.alerts,
                  AIR: self.encoder.air_hourly}[stream]
        points = encode(chunk.rows)
        self._finish(stream, points, self._write(points), {stream: chunk.next}, out)
        if chunk.more:
            out.wait = 0.0

    # --- writing --------------------------------------------------------------------------

    def _finish(self, stream: str, points: list[Point], refused: list[tuple[Point, str]],
                positions: dict[str, int | None], out: Outcome,
                span: tuple[int, int] | None = None) -> None:
        """The server acknowledged `points` (all but `refused`): move the cursors. For
        readings, `span` is the chunk's id range, where the refused polls' ids are found."""
        rejected: dict[int, str] = {}
        for point, message in refused:
            for item in self._items(point, span):
                rejected.setdefault(item, message)
        self._commit(positions, [(stream, item, msg) for item, msg in rejected.items()])
        items = sum(p.count for p in points) if stream == READINGS else \
            len({i for p in points for i in p.items})
        out.sent += items - len(rejected)
        out.rejected += len(rejected)
        if self.metrics is not None:
            self.metrics.sink_sent.labels(self.name, stream).inc(items - len(rejected))
            self.metrics.sink_points.labels(self.name, stream).inc(len(points) - len(refused))
        if refused:
            self._on_rejected(stream, refused, len(rejected), out)

    def _items(self, point: Point, span: tuple[int, int] | None) -> list[int]:
        if point.poll is None or span is None:
            return list(point.items)
        device, t = point.poll
        return self.streams.readings.poll_ids(device, t, span[0], span[1])

    def _write(self, points: list[Point], data: bytes | None = None) -> list[tuple[Point, str]]:
        """Write `points` (`data`: their body, when already joined); return those refused
        for good, with the server's message.

        A refused chunk is split in halves until each refused point stands alone, so one
        bad point costs about 2*log2(chunk) writes and never holds the stream up."""
        if not points:
            return []
        try:
            self.transport.write(body(points) if data is None else data)
            return []
        except SinkRejected as exc:
            if len(points) == 1:
                return [(points[0], str(exc))]
            mid = len(points) // 2
            return self._write(points[:mid]) + self._write(points[mid:])

    # --- rejections are reported ---------------------------------------------------------

    def _on_rejected(self, stream: str, refused: list[tuple[Point, str]], items: int,
                     out: Outcome) -> None:
        message = refused[-1][1]
        log.error("%s: the server refused %d point(s) of %s for good; kept in the store as "
                  "rejected: %s", self.name, len(refused), stream, message)
        if self.metrics is not None:
            self.metrics.sink_rejected.labels(self.name, stream).inc(items)
        out.rejections.append(Rejection(stream, len(refused), items, message))

    # --- running --------------------------------------------------------------------------

    def drain(self, timeout: float = 60.0) -> int:
        """Cycle until nothing is left (or `timeout` passes); returns items acknowledged
        or rejected. Failures raise: meant for commands, tests and benchmarks; the daemon
        uses `run`."""
        deadline = time.monotonic() + timeout
        total = 0
        while True:
            out = self.step()
            total += out.sent + out.rejected
            if out.sent == 0 and out.rejected == 0 and self.gap is None \
                    and time.monotonic() >= self._next_backlog \
                    and self.backlog().count == 0:
                return total
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: not drained within {timeout:.0f} s")
            if out.wait > 0 and out.sent == 0:
                time.sleep(min(out.wait, 0.05))

    def wake(self) -> None:
        """New rows were committed: look now rather than at the next interval."""
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def run(self) -> None:
        """The loop of the daemon's forwarding thread, until `stop()`."""
        failing_since: float | None = None
        while not self._stop.is_set():
            try:
                out = self.step()
            except SinkRetryable as exc:
                delay = self._backoff.next(at_least=exc.retry_after)
                self.last_error = str(exc)
                self._count_error(exc)
                if failing_since is None:
                    failing_since = time.monotonic()
                    log.warning("%s: %s; nothing is lost, the store keeps it; retrying in "
                                "%.1f s and backing off", self.name, exc, delay)
                else:
                    log.debug("%s: still failing: %s; next try in %.1f s", self.name, exc, delay)
                self._stop.wait(delay)
                continue
            except Exception as exc:
                # a store problem (disk full, locked): contained, logged once, tried again
                delay = self._backoff.next()
                self.last_error = f"{type(exc).__name__}: {exc}"
                if self.metrics is not None:
                    self.metrics.sink_errors.labels(self.name, "internal").inc()
                if failing_since is None:
                    failing_since = time.monotonic()
                    # the store's own failures (a full disk) need no traceback; others do
                    log.warning("%s: forwarding cycle failed (%s); retrying in %.1f s and "
                                "backing off", self.name, self.last_error, delay,
                                exc_info=not isinstance(exc, STORE_ERRORS + (EnergydError,)))
                else:
                    log.debug("%s: forwarding cycle still failing: %s", self.name,
                              self.last_error)
                self._stop.wait(delay)
                continue
            if failing_since is not None:
                log.info("%s: writing again after %.0f s and %d failed attempts",
                         self.name, time.monotonic() - failing_since, self._backoff.attempt)
                failing_since = None
            self._backoff.reset()
            self.last_error = None
            if self.metrics is not None:
                self.metrics.sink_up.labels(self.name).set(1)
            if out.wait > 0:
                self._wake.wait(out.wait)
                self._wake.clear()
        self._stop.clear()

    def _count_error(self, exc: SinkRetryable) -> None:
        if self.metrics is None:
            return
        self.metrics.sink_errors.labels(self.name, exc.reason).inc()
        self.metrics.sink_up.labels(self.name).set(0)

    def health(self) -> dict[str, Any]:
        return {
            "state": "failing" if self.last_error else "ok",
            "last_error": self.last_error,
            "last_success": datetime.fromtimestamp(self.last_success, UTC).isoformat(
                timespec="seconds") if self.last_success else None,
            "catching_up": self.gap is not None,
        }

    def close(self) -> None:
        self.stop()
        self._pool.shutdown(wait=True)
        self.transport.close()
