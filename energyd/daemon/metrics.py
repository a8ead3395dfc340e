"""The daemon's own metrics, in a registry of its own (no process-global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.polls = Counter("energyd_polls", "Device polls", ["device"], registry=r)
        self.poll_errors = Counter("energyd_poll_errors", "Failed device polls",
                                   ["device", "reason"], registry=r)
        self.link_busy = Counter("energyd_link_busy_seconds",
                                 "Seconds a Modbus link had a request outstanding (its rate "
                                 "is the link's utilisation)", ["link"], registry=r)
        self.readings = Counter("energyd_readings_committed", "Readings committed to the store",
                                registry=r)
        self.store_bytes = Gauge("energyd_store_bytes", "Bytes in use by the store", registry=r)
        self.store_conflicts = Counter(
            "energyd_store_conflicts", "Readings that came with another value for a series "
            "and time the store holds (kept in its conflicts table; the stored value stands)",
            ["device"], registry=r)
        self.store_shed = Counter("energyd_store_shed",
                                  "Readings shed under the disk quota", registry=r)
        self.pending = Gauge("energyd_store_pending_readings",
                             "Readings read but not yet committed (held while commits fail)",
                             registry=r)
        self.pending_dropped = Counter(
            "energyd_store_pending_dropped",
            "Readings held while commits failed and dropped to bound memory: gauges shed, "
            "counters thinned (every other reading, past twice the bound)", ["how"],
            registry=r)
        self.degraded = Gauge("energyd_degraded", "1 while the daemon is in this degraded state",
                              ["state"], registry=r)
        self.backlog = Gauge("energyd_sink_backlog", "Items not yet forwarded",
                             ["sink", "stream"], registry=r)
        self.backlog_age = Gauge("energyd_sink_oldest_unsent_age_seconds",
                                 "Age of the oldest unsent reading", ["sink", "stream"],
                                 registry=r)
        self.sink_sent = Counter("energyd_sink_sent", "Items acknowledged by the server",
                                 ["sink", "stream"], registry=r)
        self.sink_rejected = Counter("energyd_sink_rejected", "Items refused for good",
                                     ["sink", "stream"], registry=r)
        self.sink_errors = Counter("energyd_sink_errors", "Failed writes", ["sink", "reason"],
                                   registry=r)
        self.sink_points = Counter("energyd_sink_points", "Points acknowledged by the server",
                                   ["sink", "stream"], registry=r)
        self.sink_up = Gauge("energyd_sink_up", "1 while the sink's last write succeeded",
                             ["sink"], registry=r)
        self.mqtt_messages = Counter("energyd_mqtt_messages", "MQTT messages received",
                                     ["topic"], registry=r)
        self.mqtt_rejected = Counter("energyd_mqtt_rejected", "MQTT messages refused",
                                     ["topic", "reason"], registry=r)
        self.mqtt_connected = Gauge("energyd_mqtt_connected",
                                    "1 while connected and subscribed to the MQTT broker",
                                    registry=r)
        self.mqtt_waiting = Gauge("energyd_mqtt_waiting_for_commit",
                                  "MQTT messages received but not yet committed and "
                                  "acknowledged", registry=r)
        self.alerts = Counter("energyd_alerts", "Alert episodes started", ["rule"], registry=r)
        self.alerts_active = Gauge("energyd_alerts_active", "Alert episodes now active",
                                   registry=r)
        self.alert_dispatch_failures = Counter(
            "energyd_alert_dispatch_failures", "Alert events a channel could not deliver",
            ["channel"], registry=r)
        self.clock_steps = Counter("energyd_clock_steps",
                                   "Steps of the wall clock against the monotonic clock",
                                   registry=r)
        self.clock_last_step = Gauge("energyd_clock_last_step_seconds",
                                     "Size of the last step of the wall clock (negative: back)",
                                     registry=r)
        self.clock_suspect = Gauge("energyd_clock_suspect",
                                   "1 while the wall clock cannot be trusted", registry=r)
        self.readings_clock_suspect = Counter(
            "energyd_readings_clock_suspect",
            "Readings stamped under a suspect clock: kept, held out of the rollup", registry=r)
        self.up = Gauge("energyd_up", "1 while the daemon runs", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
