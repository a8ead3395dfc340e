"""An MQTT compressor station: the air model of simulators/air.py, published over MQTT.

    async with CompressorStation(broker=("127.0.0.1", port), station="air1", compressors=4,
                                 clock=AcceleratedClock(60), rate=1.0) as station:
        ...                                  # it publishes in the background
        station.inject_leak(8.0)             # a step up in demand, off-shift too
        await station.wait_acked()           # every message so far taken by the broker
    station.acked["air1-c1"]                 # {seq: time_ms} the broker acknowledged
    station.last_payload["air1-c1"]          # the last JSON object published, as a dict

Keyword arguments: `broker` (host, port; loopback only), `station` (name, also the prefix
of the compressor names `<station>-c1`..), `compressors` (count), `clock` (an energyd
clock; an AcceleratedClock runs the plant fast, default RealClock), `rate` (messages per
clock second per compressor, default 1), `leak` (m3/min added to the demand from the
start), `malformed` (share of extra malformed messages, 0..1: not JSON, NaN, a missing
field, text for a number, a timestamp a year ahead, an oversized payload, in turn),
`topic_prefix` ("plant/air"), `qos` (1), `client_id` (default "energyd-sim-<station>"),
`seed`, `system` (an AirSystem to publish instead of a fresh one).

Each compressor publishes to `<topic_prefix>/<station>-c<i>/telemetry` a JSON object::

    {"ts": 1700000000000, "seq": 17, "state": 2, "power_kw": 52.1, "energy_kwh": 1234.5,
     "pressure_bar": 7.02, "flow_m3_min": 10.0, "running_hours": 5012.3, "loaded_hours": 3811.0}

`ts` is epoch milliseconds of the clock; `seq` counts that compressor's messages from 1.
`FIELDS` maps the quantity vocabulary onto these keys, and `device_entries()` /
`template_entry()` give config `devices:` entries that read them. The publisher keeps a
persistent session (fixed client id, clean session off) and QoS 1, so messages published
while the broker restarts are queued and sent when it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from typing import Any, Self

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from energyd.clock import Clock, RealClock
from energyd.model import to_ms
from energyd.simulators.air import AirSystem
from energyd.simulators.loopback import check_loopback

log = logging.getLogger(__name__)

FIELDS = {
    "active_power_kw": "power_kw",
    "active_energy_import_kwh": "energy_kwh",
    "pressure_bar": "pressure_bar",
    "flow_m3_min": "flow_m3_min",
    "compressor_state": "state",
    "running_hours_h": "running_hours",
    "loaded_hours_h": "loaded_hours",
}
MALFORMED_KINDS = ("not_json", "not_finite", "missing_field", "not_numeric", "clock_skew",
                   "too_large")


class Publisher:
    """A paho client that publishes QoS 1 and remembers what the broker acknowledged."""

    def __init__(self, broker: tuple[str, int], client_id: str, *, max_inflight: int = 100):
        check_loopback(broker[0], "broker")
        self.broker = broker
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=MQTTProtocolVersion.MQTTv311, clean_session=False)
        self.client.max_inflight_messages_set(max_inflight)
        self.client.max_queued_messages_set(0)
        self.client.reconnect_delay_set(1, 2)
        self.client.on_publish = self._on_publish
        self._lock = threading.Lock()
        self._waiting: dict[int, tuple[str, int, int] | None] = {}
        self._early: set[int] = set()
        self.acked: dict[str, dict[int, int]] = {}
        self.outstanding = 0

    def start(self) -> None:
        self.client.connect_async(*self.broker, keepalive=10)
        self.client.loop_start()

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def publish(self, topic: str, payload: bytes, qos: int = 1,
                record: tuple[str, int, int] | None = None) -> None:
        info = self.client.publish(topic, payload, qos=qos)
        if qos == 0:
            return
        with self._lock:
            if info.mid in self._early:
                self._early.discard(info.mid)
                self._record(record)
            else:
                self._waiting[info.mid] = record
                self.outstanding += 1

    def _record(self, record: tuple[str, int, int] | None) -> None:
        if record is not None:
            device, seq, ts = record
            self.acked.setdefault(device, {})[seq] = ts

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason_code: Any,
                    properties: Any) -> None:
        with self._lock:
            if mid in self._waiting:
                self._record(self._waiting.pop(mid))
                self.outstanding -= 1
            else:
                self._early.add(mid)

    async def wait_acked(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.outstanding:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.outstanding} messages not acknowledged by the broker")
            await asyncio.sleep(0.02)


class CompressorStation:
    def __init__(self, *, broker: tuple[str, int], station: str = "air1", compressors: int = 4,
                 clock: Clock | None = None, rate: float = 1.0, leak: float = 0.0,
                 malformed: float = 0.0, topic_prefix: str = "plant/air", qos: int = 1,
                 client_id: str | None = None, seed: int = 0, system: AirSystem | None = None):
        if compressors < 1:
            raise ValueError("a station needs at least one compressor")
        if rate <= 0:
            raise ValueError("rate must be positive")
        if not 0 <= malformed <= 1:
            raise ValueError("malformed is a share between 0 and 1")
        self.station = station
        self.clock = clock or RealClock()
        self.rate = rate
        self.malformed = malformed
        self.topic_prefix = topic_prefix.rstrip("/")
        self.qos = qos
        self.system = system or AirSystem.build(compressors, prefix=f"{station}-c", seed=seed)
        self.system.inject_leak(leak)
        self.publisher = Publisher(broker, client_id or f"energyd-sim-{station}")
        self.seq: dict[str, int] = {c.name: 0 for c in self.system.compressors}
        self.malformed_sent: dict[str, int] = {}
        self.last_payload: dict[str, dict[str, Any]] = {}
        self._malformed_debt = 0.0
        self._malformed_turn = 0
        self._task: asyncio.Task[None] | None = None

    # --- description ------------------------------------------------------------------------

    @property
    def devices(self) -> list[str]:
        return [c.name for c in self.system.compressors]

    def topic(self, device: str) -> str:
        return f"{self.topic_prefix}/{device}/telemetry"

    @property
    def acked(self) -> dict[str, dict[int, int]]:
        return self.publisher.acked

    def device_entries(self, role: str = "compressor") -> list[dict[str, Any]]:
        """Config `devices:` entries, one per compressor with its exact topic."""
        return [{"name": c.name, "role": role, "driver": "mqtt",
                 "rated_power_kw": c.rated_kw,
                 "mqtt": {"topic": self.topic(c.name), "station": self.station,
                          "timestamp": "ts", "fields": dict(FIELDS)}}
                for c in self.system.compressors]

    def template_entry(self, role: str = "compressor") -> dict[str, Any]:
        """One config entry for the whole station: the topic level names the compressor."""
        return {"name": self.station, "role": role, "driver": "mqtt",
                "mqtt": {"topic": f"{self.topic_prefix}/+/telemetry",
                         "device_level": len(self.topic_prefix.split("/")),
                         "devices": self.devices, "station": self.station,
                         "timestamp": "ts", "fields": dict(FIELDS)}}

    # --- running ----------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self.publisher.start()
        self._task = asyncio.create_task(self.run(), name=f"simulator[{self.station}]")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self, wait: float = 10.0) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(TimeoutError):
            await self.publisher.wait_acked(wait)
        await asyncio.to_thread(self.publisher.stop)

    async def wait_acked(self, timeout: float = 10.0) -> None:
        await self.publisher.wait_acked(timeout)

    def inject_leak(self, m3_min: float) -> None:
        self.system.inject_leak(m3_min)

    async def run(self) -> None:
        """Publish until cancelled (the context manager starts this in a task)."""
        interval = 1.0 / self.rate
        last = self.clock.now()
        while True:
            await self.clock.sleep(interval)
            now = self.clock.now()
            self.system.step(now, (now - last).total_seconds())
            last = now
            self.publish_once(now)

    def publish_once(self, now: Any) -> None:
        ts = to_ms(now)
        for c in self.system.compressors:
            n = self.seq[c.name] = self.seq[c.name] + 1
            payload = {"ts": ts, "seq": n, "state": c.state,
                       "power_kw": round(c.power_kw, 3), "energy_kwh": round(c.energy_kwh, 4),
                       "pressure_bar": round(self.system.pressure_bar, 3),
                       "flow_m3_min": round(c.flow_m3_min, 3),
                       "running_hours": round(c.running_h, 5),
                       "loaded_hours": round(c.loaded_h, 5)}
            self.publisher.publish(self.topic(c.name), json.dumps(payload).encode(), self.qos,
                                   record=(c.name, n, ts))
            self.last_payload[c.name] = payload
            if self.malformed:
                self._malformed_debt += self.malformed
                if self._malformed_debt >= 1.0:
                    self._malformed_debt -= 1.0
                    self._publish_malformed(c.name, payload)

    def _publish_malformed(self, device: str, good: dict[str, Any]) -> None:
        kind = MALFORMED_KINDS[self._malformed_turn % len(MALFORMED_KINDS)]
        self._malformed_turn += 1
        bad = dict(good, seq=None)
        if kind == "not_json":
            payload = b"{'power_kw': 12"
        else:
            if kind == "not_finite":
                body = json.dumps(dict(bad, power_kw=float("nan"), flow_m3_min=float("inf")))
            elif kind == "missing_field":
                body = json.dumps({"ts": good["ts"], "seq": None})
            elif kind == "not_numeric":
                body = json.dumps(dict(bad, power_kw="error", flow_m3_min=None))
            elif kind == "clock_skew":
                body = json.dumps(dict(bad, ts=good["ts"] + 366 * 86400 * 1000))
            else:
                body = json.dumps(dict(bad, padding="x" * 70000))
            payload = body.encode()
        self.publisher.publish(self.topic(device), payload, self.qos)
        self.malformed_sent[kind] = self.malformed_sent.get(kind, 0) + 1


async def run_cli(host: str, port: int, *, station: str, compressors: int, rate: float,
                  leak: float, malformed: float, speed: float, topic_prefix: str,
                  duration: float | None) -> None:
    """`energyd simulate compressor`: run a station and print the config that reads it."""
    from energyd.clock import AcceleratedClock

    check_loopback(host, "broker")
    clock: Clock = RealClock() if speed == 1.0 else AcceleratedClock(speed)
    sim = CompressorStation(broker=(host, port), station=station, compressors=compressors,
                            clock=clock, rate=rate, leak=leak, malformed=malformed,
                            topic_prefix=topic_prefix)
    print(json.dumps({"mqtt": {"host": host, "port": port},
                      "devices": [sim.template_entry()]}, indent=2), flush=True)
    async with sim:
        started = time.monotonic()
        while duration is None or time.monotonic() - started < duration:
            await asyncio.sleep(min(5.0, duration or 5.0))
            s = sim.system
            log.info("%s: demand %.1f m3/min, pressure %.2f bar, %s", station,
                     s.demand_m3_min, s.pressure_bar,
                     " ".join(f"{c.name}={'-UL'[c.state]}" for c in s.compressors))
