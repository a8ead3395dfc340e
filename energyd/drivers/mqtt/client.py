"""MQTT acquisition on paho-mqtt 2: payload mapping and the broker connection.

Two parts, kept apart so the mapping can be tested without a broker:

* `PayloadMapper` turns (topic, payload bytes, receive time) into Readings, or refuses the
  message with `Rejected(reason, detail)`. It never raises anything else.
* `Subscriber` owns the one paho client of a daemon: `connect_async` + `loop_start` (a broker
  that is down at start-up is retried with capped backoff, every attempt logged once on the
  way into failure and once on recovery), subscriptions made in `on_connect` so a reconnect
  resubscribes, a persistent session (fixed client id; 3.1.1 clean session off, MQTT 5
  clean start off with a session expiry), TLS, username and password.

Broker options (config `mqtt:`): host, port (1883), client_id ("energyd"), protocol ("5" or
"3.1.1"), keepalive (30 s), qos (1), session_expiry (7 d, MQTT 5), max_inflight (10000),
reconnect_delay_max (60 s), username, password_file / password_env, tls {ca_file,
cert_file, key_file, insecure}, max_payload (64 KiB), max_clock_skew (1 d, into the future),
max_message_age (30 d, into the past), backlog_gap (1 s).

Device options (config `devices[].mqtt:`)::

    - name: air1-c1                    # one entry per compressor, exact topic
      role: compressor
      driver: mqtt
      mqtt:
        topic: plant/air/air1-c1/telemetry
        station: air1
        timestamp: ts                  # ISO 8601 text, or epoch s / ms as a number
        fields: {active_power_kw: power_kw, flow_m3_min: flow_m3_min}

    - name: air2                       # or a template: the topic level names the device
      role: compressor
      driver: mqtt
      mqtt:
        topic: plant/air/+/telemetry
        device_level: 2                # plant/air/<device>/telemetry
        devices: [air2-c1, air2-c2]    # the only names it accepts
        fields: {...}

    - name: hall-meter                 # format value: the payload is one bare number
      driver: mqtt
      mqtt: {topic: plant/hall/power, format: value, quantity: active_power_kw}

With an exact topic the readings carry the entry's name. With a template they carry the
level's text, which must be one of `devices`; the template's role and station apply to
each (per-compressor settings such as rated power need per-compressor entries).

    - name: meter7                     # format sparkplug_b: an edge node's device
      driver: mqtt
      mqtt:
        format: sparkplug_b
        topic: spBv1.0/plant/+/gateway1/meter7   # spBv1.0/<group>/+/<edge node>[/<device>]
        fields: {active_power_kw: Power/Active, active_energy_import_kwh: Energy/Import}

Sparkplug B entries subscribe to their edge node's whole subtree; births, aliases, sequence
numbers and deaths are kept per node by energyd/drivers/mqtt/sparkplug.py.

Time: a payload's own timestamp is the readings' time (quality good). A message without one
takes its receive time, made strictly increasing per device (each message at least a
millisecond, the store's grain, after the device's previous one, in arrival order, which MQTT
keeps per topic), so messages arriving together are never stored onto one time; those readings
are of quality received, or received_backlog when the message came from the session's
backlog after a reconnect (see MqttComponent._from_backlog in energyd/daemon/subscriptions.py).

Bad input never reaches the store: a payload over max_payload, bytes that are not UTF-8
JSON, a mapped field that is missing, not a number or not finite, a timestamp that cannot
be read, lies more than max_clock_skew ahead of the clock ("clock_skew") or more than
max_message_age behind it ("too_old": a broker session keeps what was queued during an
outage, and that is real data, so the bound is generous). A field that is bad is left out
and the message's good fields are kept; a bad timestamp or payload refuses the message.

Durability: messages are taken with paho's `manual_ack`: the PUBACK (QoS 1) goes to the
broker only after the readings of that message are committed to the store, so a message
that was received but not yet committed when energyd dies is sent again by the broker.
See energyd/daemon/subscriptions.py for the commit-then-ack path.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import struct
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from operator import itemgetter
from typing import Any

import orjson
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.matcher import MQTTMatcher
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from energyd.config.schema import Config, Mqtt
from energyd.drivers.mqtt.options import MqttDeviceOptions
from energyd.drivers.mqtt.sparkplug import (
    Metric,
    SparkplugDecoder,
    SparkplugProblem,
    Topic,
    parse_topic,
)
from energyd.model import Quality, Reading, from_ms, to_ms
from energyd.tls import client_context

log = logging.getLogger(__name__)

__all__ = ["PayloadMapper", "Rejected", "Route", "Subscriber"]

# Connection numbers are unique in the process, so a message id can never be acknowledged
# on a later connection, not even one of a new Subscriber.
_connections = itertools.count(1)

# A number this large as a timestamp is milliseconds: 1e11 s would be the year 5138.
_EPOCH_MS_FROM = 1e11

# An acknowledgement as paho's ack() sends it (3.1.1 and 5: type, length 2, packet id; MQTT 5
# leaves out the reason code when it is success), by the QoS of the message it answers.
_ACK = struct.Struct("!BBH")
_ACK_COMMAND = {1: paho.PUBACK, 2: paho.PUBCOMP}


class Rejected(Exception):
    """A message (or one of its fields) refused; `reason` is a short metric label."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Route:
    """One config entry's subscription: which topics, which device, how to read them."""

    entry: str  # the config device entry's name
    topic: str  # exact topic or pattern
    options: MqttDeviceOptions
    fields: tuple[tuple[str, tuple[str, ...]], ...]  # (quantity, path parts)
    timestamp: tuple[str, ...] | None
    allowed: frozenset[str] | None  # names a template's device level may take
    # format sparkplug_b: the Sparkplug device the entry reads (None: the edge node's own
    # metrics) and metric name -> quantity; `topic` is then the node's whole subtree
    sparkplug_device: str | None = None
    metrics: tuple[tuple[str, str], ...] = ()
    # format json: the quantities of `fields` in their order, and, for a flat object, every
    # field's value of a document at once (see _plain_values)
    quantities: tuple[str, ...] = ()
    values_of: Callable[[Any], Sequence[Any]] | None = None

    @property
    def is_pattern(self) -> bool:
        return "+" in self.topic or "#" in self.topic

    def device_for(self, topic: str) -> str:
        level = self.options.device_level
        if level is None:
            return self.entry
        name = topic.split("/")[level]
        if self.allowed is not None and name not in self.allowed:
            raise Rejected("unknown_device",
                           f"{name!r} is not among the devices of {self.entry!r}")
        return name


_CACHE_TOPICS = 100_000


def _path(dotted: str) -> tuple[str, ...]:
    return tuple(dotted.split("."))


def _lookup(doc: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        if isinstance(doc, dict):
            if part not in doc:
                raise KeyError(part)
            doc = doc[part]
        elif isinstance(doc, list) and part.isdigit() and int(part) < len(doc):
            doc = doc[int(part)]
        else:
            raise KeyError(part)
    return doc


def _field(doc: Any, path: tuple[str, ...]) -> Any:
    """_lookup, quicker for the usual case (objects within objects, every key there): only
    a JSON object is indexed by a text key without a TypeError."""
    value = doc
    try:
        for part in path:
            value = value[part]
    except (KeyError, TypeError, IndexError):
        return _lookup(doc, path)  # a list, a missing key: said the way _lookup says it
    return value


_reading = tuple.__new__


def _values_of(paths: tuple[tuple[str, ...], ...]) -> Callable[[Any], Sequence[Any]] | None:
    """Every field's value of a flat object in one call (a C loop of item lookups); None
    for one field or a nested path, which go field by field."""
    if len(paths) > 1 and all(len(p) == 1 for p in paths):
        return itemgetter(*(p[0] for p in paths))
    return None


def _plain_values(values_of: Callable[[Any], Sequence[Any]], doc: Any
                  ) -> Sequence[float | int] | None:
    """The values of a message whose every field is there and a finite number (the usual
    message), looked up and checked at once; None when one is not, and the message goes
    field by field, which says which field is wrong and keeps the good ones."""
    try:
        got = values_of(doc)
        # as floats, as they will be stored: text, null, an object: TypeError; an integer
        # beyond a float: OverflowError; infinities of both signs: ValueError
        total = math.fsum(got)
    except (KeyError, TypeError, IndexError, OverflowError, ValueError):
        return None
    # not finite if one is not (then the slow way says which); true and false are numbers
    # to fsum() but not readings
    if total - total != 0 or bool in map(type, got):
        return None
    return got


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or value is None:
        raise Rejected("not_numeric", f"{what} is {json.dumps(value)}, not a number")
    if isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:
            raise Rejected("not_finite", f"{what} is too large for a float") from None
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise Rejected("not_numeric", f"{what} is {value[:40]!r}, not a number") from None
    else:
        raise Rejected("not_numeric", f"{what} is a {type(value).__name__}, not a number")
    if not math.isfinite(number):
        raise Rejected("not_finite", f"{what} is {number}")
    return number


def parse_time(value: Any) -> datetime:
    """ISO 8601 text with an offset, or epoch seconds / milliseconds as a number."""
    if isinstance(value, str):
        try:
            when = datetime.fromisoformat(value.strip())
        except ValueError:
            try:
                return parse_time(float(value))
            except (Rejected, ValueError):
                raise Rejected("bad_timestamp", f"{value[:40]!r} is not ISO 8601") from None
        if when.tzinfo is None:
            raise Rejected("bad_timestamp", f"{value[:40]!r} has no UTC offset")
        return when.astimezone(UTC)
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        seconds = value / 1000 if abs(value) >= _EPOCH_MS_FROM else value
        try:
            return datetime.fromtimestamp(seconds, tz=UTC)
        except (OverflowError, OSError, ValueError):
            raise Rejected("bad_timestamp", f"{value!r} is out of range") from None
    raise Rejected("bad_timestamp", f"{json.dumps(value)[:40]} is not a time")


class PayloadMapper:
    """Routes topics to config entries and decodes payloads into Readings."""

    def __init__(self, config: Config):
        assert config.mqtt is not None or not any(d.driver == "mqtt" for d in config.devices)
        broker = config.mqtt or Mqtt()
        self.max_payload = broker.max_payload
        self.max_skew = timedelta(seconds=broker.max_clock_skew)
        self.max_age = timedelta(seconds=broker.max_message_age)
        # the last receive time (ms) given to each device's messages: see `_receipt`
        self._receipts: dict[str, int] = {}
        self.sparkplug = SparkplugDecoder()
        self.routes: list[Route] = []
        for d in config.devices:
            if d.driver != "mqtt" or not d.enabled or d.mqtt is None:
                continue
            o = d.mqtt
            if o.format == "sparkplug_b":
                # the node's every message, whatever device the entry reads: its births,
                # sequence numbers and deaths are the node's (sparkplug.py)
                levels = o.topic.split("/")
                self.routes.append(Route(
                    d.name, "/".join(levels[:4]) + "/#", o, (), None, None,
                    levels[4] if len(levels) == 5 else None,
                    tuple((name, q) for q, name in o.fields.items())))
                continue
            fields = tuple((q, _path(p)) for q, p in o.fields.items())
            self.routes.append(Route(
                d.name, o.topic, o, fields, _path(o.timestamp) if o.timestamp else None,
                frozenset(o.devices) if o.devices else None,
                quantities=tuple(q for q, _ in fields),
                values_of=_values_of(tuple(p for _, p in fields))))
        self._exact: dict[str, list[Route]] = {}
        self._cache: dict[str, list[tuple[Route, str]] | Rejected] = {}
        # paho's own topic-filter trie (`+`, `#`, and `$` topics out of a leading
        # wildcard's reach): each filter holds its routes with their place in the config
        self._patterns = MQTTMatcher()
        self._any_pattern = False
        for i, r in enumerate(self.routes):
            if r.is_pattern:
                try:
                    self._patterns[r.topic].append((i, r))
                except KeyError:
                    self._patterns[r.topic] = [(i, r)]
                self._any_pattern = True
            else:
                self._exact.setdefault(r.topic, []).append(r)

    def filters(self) -> list[str]:
        """The topic filters to subscribe to, each once."""
        return list(dict.fromkeys(r.topic for r in self.routes))

    def routes_for(self, topic: str) -> list[Route]:
        routes = self._exact.get(topic, [])
        if self._any_pattern:
            # in the config's order, as the exact ones: the last refusal is the one shown
            matched = sorted(x for found in self._patterns.iter_match(topic) for x in found)
            routes = routes + [r for _, r in matched]
        return routes

    def _named(self, topic: str) -> list[tuple[Route, str]] | Rejected:
        """The routes that take `topic`, each with the device it names (cached per topic)."""
        named = self._cache.get(topic)
        if named is None:
            routes = self.routes_for(topic)
            found: list[tuple[Route, str]] = []
            refusal = Rejected("no_route", "no device is configured for this topic")
            for route in routes:
                try:
                    found.append((route, route.device_for(topic)))
                except Rejected as exc:
                    refusal = exc  # another template may take this device
            named = found or refusal
            if len(self._cache) < _CACHE_TOPICS:  # bounded: a publisher may invent topics
                self._cache[topic] = named
        return named

    def _sparkplug(self, topic: str, payload: bytes, problems: list[Rejected] | None
                   ) -> tuple[Topic, list[Metric]]:
        parsed = parse_topic(topic)
        if parsed is None:
            raise Rejected("not_sparkplug", "not a Sparkplug B topic")
        try:
            metrics, found = self.sparkplug.decode(parsed, payload)
        except SparkplugProblem as exc:
            raise Rejected(exc.reason, exc.detail) from None
        for p in found:
            if problems is None:
                raise Rejected(p.reason, p.detail)
            problems.append(Rejected(p.reason, p.detail))
        return parsed, metrics

    def _sparkplug_readings(self, route: Route, device: str, metrics: list[Metric],
                            received: datetime, receipt: Quality,
                            problems: list[Rejected] | None, check_skew: bool = True
                            ) -> list[Reading]:
        quantities = dict(route.metrics)
        out = []
        stamped = None  # the message's one receive time, for the metrics without a time
        for m in metrics:
            quantity = quantities.get(m.name)
            if quantity is None:
                continue  # a metric this entry does not map
            if m.time_ms is None:
                if stamped is None:
                    stamped = self._receipt(device, received)
                out.append(Reading(stamped, device, quantity, m.value, receipt))
                continue
            when = from_ms(m.time_ms)
            try:
                if check_skew:
                    self._check_time(when, received)
            except Rejected as exc:
                if problems is None:
                    raise
                problems.append(Rejected(exc.reason, f"metric {m.name!r}: {exc.detail}"))
                continue
            out.append(Reading(when, device, quantity, m.value))
        return out

    def _check_time(self, when: datetime, received: datetime) -> None:
        if when - received > self.max_skew:
            raise Rejected("clock_skew", f"time {when.isoformat()} is more than "
                           f"{self.max_skew} ahead of now ({received.isoformat()})")
        if received - when > self.max_age:
            raise Rejected("too_old", f"time {when.isoformat()} is more than "
                           f"{self.max_age} before now ({received.isoformat()})")

    def _receipt(self, device: str, received: datetime) -> datetime:
        """The time of a message that carries none: its receive time, made later than the
        device's previous one by at least a millisecond (the store's grain), so messages
        arriving in the same millisecond stay apart, in arrival order (which MQTT keeps per
        topic). A burst runs ahead of the clock by a millisecond per message at most."""
        ms = to_ms(received)
        last = self._receipts.get(device)
        if last is not None and ms <= last:
            ms = last + 1
        elif last is None and len(self._receipts) >= _CACHE_TOPICS:
            self._receipts.clear()  # bounded like the topic cache; loses only the tie-break
        self._receipts[device] = ms
        return from_ms(ms)

    def map(self, topic: str, payload: bytes, received: datetime,
            problems: list[Rejected] | None = None, *, backlog: bool = False,
            retained: bool = False, check_skew: bool = True) -> list[Reading]:
        """Readings of one message. A refused message raises Rejected; a refused field is
        left out and, when `problems` is given, appended to it. `backlog`: the message came
        from the session's backlog (see MqttComponent._from_backlog), so a receive time is
        only an upper bound of when it was produced. `retained`: the broker sent a retained
        message on subscribing; without a time of its own it is refused, since when it was
        measured is unknown (hours or months ago) and it comes again at every subscription,
        where a receive time would make a new reading of an old value each time. Without
        `check_skew` (the local clock is known to be wrong) a payload's own time is taken
        however far it is from `received`."""
        if len(payload) > self.max_payload:
            raise Rejected("too_large", f"{len(payload)} bytes, the limit is {self.max_payload}")
        named = self._named(topic)
        if isinstance(named, Rejected):
            raise Rejected(named.reason, named.detail)
        out: list[Reading] = []
        doc: Any = None
        spb: tuple[Topic, list[Metric]] | None = None
        receipt = Quality.RECEIVED_BACKLOG if backlog else Quality.RECEIVED
        for route, device in named:
            o = route.options
            if o.format == "sparkplug_b":
                if spb is None:
                    spb = self._sparkplug(topic, payload, problems)
                if spb[0].device == route.sparkplug_device:
                    out += self._sparkplug_readings(route, device, spb[1], received, receipt,
                                                    problems, check_skew)
                continue
            if o.format == "value":
                try:
                    text = payload.decode("utf-8")
                except UnicodeDecodeError:
                    raise Rejected("not_utf8", "the payload is not UTF-8 text") from None
                value = _number(text, "the payload")
                assert o.quantity is not None
                if retained:
                    raise _stale()
                out.append(Reading(self._receipt(device, received), device, o.quantity, value,
                                   receipt))
                continue
            if doc is None:
                doc = _decode_json(payload)
            # none in this message: the receive time stands
            raw = _lookup_or_none(doc, route.timestamp) if route.timestamp is not None else None
            if raw is not None:
                when = parse_time(raw)
                quality = Quality.GOOD
                if check_skew:
                    self._check_time(when, received)
            elif retained:
                raise _stale()
            else:
                when, quality = None, receipt
            values = (_plain_values(route.values_of, doc) if route.values_of is not None
                      else None)
            if values is not None:
                if when is None:
                    when = self._receipt(device, received)
                # made without Reading's checks, which hold already (as below)
                out += [_reading(Reading, (when, device, quantity,
                                           v if type(v) is float else float(v), quality))
                        for quantity, v in zip(route.quantities, values, strict=True)]
                continue
            missing: list[str] = []
            for quantity, path in route.fields:
                try:
                    raw = _field(doc, path)
                except KeyError:
                    missing.append(".".join(path))
                    continue
                if type(raw) is float and raw - raw == 0:  # finite: the usual case
                    value = raw
                else:
                    try:
                        value = _number(raw, f"field {'.'.join(path)!r}")
                    except Rejected as exc:
                        if problems is None:
                            raise
                        problems.append(exc)
                        continue
                if when is None:  # stamped once the message is known to give a reading
                    when = self._receipt(device, received)
                # made without Reading's checks, which hold already: the value is finite
                # (above) and `when` is aware (parse_time, _receipt); this runs per field of
                # every message, in paho's thread
                out.append(_reading(Reading, (when, device, quantity, value, quality)))
            if missing:
                problem = Rejected("missing_field", f"no field {', '.join(missing)}")
                if problems is None:
                    raise problem
                problems.append(problem)
        if not out and problems:
            # nothing usable at all: the message is refused for its first problem
            raise problems.pop(0)
        return out


def _lookup_or_none(doc: Any, path: tuple[str, ...]) -> Any:
    try:
        return _field(doc, path)
    except KeyError:
        return None


def _stale() -> Rejected:
    return Rejected("retained_without_time",
                    "a retained message without a time of its own: when it was measured is "
                    "unknown")


def _decode_json(payload: bytes) -> Any:
    try:
        doc = orjson.loads(payload)  # a fifth of the json module's time
    except orjson.JSONDecodeError:
        # what orjson refuses the json module reads (NaN and Infinity, refused then field by
        # field so that the good fields stay; integers beyond 64 bits) or says why not
        doc = _decode_json_text(payload)
    if not isinstance(doc, dict | list):
        raise Rejected("not_json", "JSON, but not an object")
    return doc


def _decode_json_text(payload: bytes) -> Any:
    try:
        doc = json.loads(payload.decode("utf-8"))
    except UnicodeDecodeError:
        raise Rejected("not_utf8", "the payload is not UTF-8 text") from None
    except ValueError as exc:
        raise Rejected("not_json", f"not JSON ({exc.msg} at {exc.pos})") from None
    return doc


# --- the connection ------------------------------------------------------------------------


class Subscriber:
    """The daemon's broker connection. Callbacks run on paho's network thread.

    `on_message(msg, generation)` is called for every message; the caller acknowledges it
    later with `ack_all([(mid, qos, generation), ...])`. `generation` counts connections: a
    message id belongs to the connection it came on, so an ack for an earlier connection is
    not sent (the broker sends that message again on the new connection, with the same id).
    """

    def __init__(self, options: Mqtt, filters: list[str], *,
                 on_message: Callable[[paho.MQTTMessage, int], None],
                 on_connected: Callable[[bool], None] | None = None,
                 stale: list[str] | None = None):
        self.options = options
        self.filters = filters
        # filters an earlier configuration subscribed to: a persistent session keeps them
        # (and queues their messages) until they are unsubscribed
        self.stale = [f for f in stale or [] if f not in filters]
        self._on_message_cb = on_message
        self._on_connected_cb = on_connected
        self.generation = 0
        self.connected = False
        self.subscribed = False  # the broker granted every subscription on this connection
        self.last_error: str | None = None
        self._disconnected = threading.Event()
        v5 = options.protocol == "5"
        self._v5 = v5
        kwargs: dict[str, Any] = {}
        if not v5:
            kwargs["clean_session"] = False
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=options.client_id,
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
            manual_ack=True, **kwargs)
        c = self.client
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        c.on_connect_fail = self._on_connect_fail
        c.reconnect_delay_set(1, max(1, int(options.reconnect_delay_max)))
        if options.username is not None:
            pw = options.password.get_secret_value() if options.password is not None else None
            c.username_pw_set(options.username, pw)
        if options.tls is not None:
            t = options.tls
            c.tls_set_context(client_context(ca_file=t.ca_file, cert_file=t.cert_file,
                                             key_file=t.key_file, insecure=t.insecure))
            c.tls_insecure_set(t.insecure)

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        o = self.options
        if self._v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = int(min(o.session_expiry, 0xFFFFFFFF))
            props.ReceiveMaximum = o.max_inflight
            self.client.connect_async(o.host, o.port, o.keepalive, clean_start=False,
                                      properties=props)
        else:
            self.client.connect_async(o.host, o.port, o.keepalive)
        self.client.loop_start()

    def stop(self, timeout: float = 3.0) -> None:
        """DISCONNECT (after the acks already queued) and stop the network thread."""
        self._disconnected.clear()
        if self.connected:
            self.client.disconnect()
            self._disconnected.wait(timeout)
        self.client.loop_stop()

    def ack_all(self, messages: list[tuple[int, int, int]]) -> int:
        """Acknowledge (mid, qos, generation) messages, in their order, as one write to the
        broker; those of an earlier connection are left out. Returns how many were sent.

        paho's `ack()` queues one packet per message and wakes its network thread for each
        (a byte into its socketpair, then one send() per packet): a commit of 5,000 messages
        cost 10,000 system calls and as many GIL hand-overs between the committing thread
        and paho's. Here the PUBACKs (QoS 1) and PUBCOMPs (QoS 2) of a commit, the very
        bytes `ack()` would queue, go as one packet through the queue `ack()` itself uses
        (paho-mqtt 2.1 to 2.2, as pyproject pins it; the MQTT tests acknowledge through it).
        """
        generation = self.generation
        if not self.connected:
            return 0
        pack = _ACK.pack
        acks = b"".join([pack(_ACK_COMMAND[qos], 2, mid) for mid, qos, g in messages
                         if g == generation and qos in _ACK_COMMAND])
        if acks:
            self.client._packet_queue(paho.PUBACK, acks, 0, 1)
        return len(acks) // _ACK.size

    # --- paho callbacks (network thread) --------------------------------------------------

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason_code: Any,
                    properties: Any) -> None:
        o = self.options
        if reason_code.is_failure:
            self._failure(f"refused by {o.host}:{o.port}: {reason_code}")
            return
        self.generation = next(_connections)
        self.connected = True
        if self.last_error is not None:
            log.info("mqtt: connected to %s:%s again", o.host, o.port)
        else:
            log.info("mqtt: connected to %s:%s as %s", o.host, o.port, o.client_id)
        self.last_error = None
        if not flags.session_present:
            log.info("mqtt: new session at the broker (messages published while energyd "
                     "had no session there were not kept for it)")
        if self.stale:
            log.info("mqtt: unsubscribing from %s (no longer configured)", ", ".join(self.stale))
            client.unsubscribe(self.stale)
            self.stale = []
        if self.filters:
            client.subscribe([(f, o.qos) for f in self.filters])
        if self._on_connected_cb is not None:
            self._on_connected_cb(bool(flags.session_present))

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, reason_codes: Any,
                      properties: Any) -> None:
        refused = False
        for topic, rc in zip(self.filters, reason_codes, strict=False):
            if rc.is_failure:
                refused = True
                log.error("mqtt: the broker refused the subscription to %s: %s", topic, rc)
        self.subscribed = not refused

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason_code: Any,
                       properties: Any) -> None:
        was = self.connected
        self.connected = False
        self.subscribed = False
        self._disconnected.set()
        if was and reason_code != 0:
            self._failure(f"connection to {self.options.host}:{self.options.port} lost: "
                          f"{reason_code}")
        elif not was and self.last_error is None:
            self._failure(f"cannot connect to {self.options.host}:{self.options.port}")

    def _on_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        self._failure(f"cannot connect to {self.options.host}:{self.options.port}")

    def _failure(self, message: str) -> None:
        if self.last_error is None:
            log.warning("mqtt: %s; retrying", message)
        self.last_error = message

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        # An exception escaping a paho callback stops its network thread: contain it here.
        try:
            self._on_message_cb(msg, self.generation)
        except Exception:
            log.exception("mqtt: handling a message on %s failed", msg.topic)
