"""Sparkplug B payloads (`format: sparkplug_b`): the edge nodes' state and their metrics.

Sparkplug B (Eclipse Tahu) runs over MQTT: topics `spBv1.0/<group>/<type>/<edge node>[/<device>]`,
payloads in protobuf (decoded with the protobuf runtime and the schema compiled from Tahu's
sparkplug_b.proto, `_sparkplug_b_pb2`). pysparkplug was looked at and not taken: its client
needs paho-mqtt 1 and energyd runs on paho-mqtt 2; its payload classes add nothing the
schema does not give.

What a host that only reads has to keep, per edge node (`SparkplugDecoder`):

* Birth certificates. NBIRTH (node) and DBIRTH (device) name every metric, give its data type
  and, usually, an alias (a number) that NDATA/DDATA then send instead of the name. Their
  values are readings too. A data message that sends an alias whose birth energyd has not seen
  (it started after the birth) is refused ("no_birth") and counted: energyd never asks for a
  rebirth (an NCMD is a write to the edge node; energyd writes to no device), it waits for the
  next birth, which an edge node sends when it reconnects or when its primary host comes back.
* Sequence numbers. Every message of a node after its NBIRTH (seq 0) carries the next seq,
  0-255 round. A gap means a message was lost (Sparkplug publishes data at QoS 0) or came out of
  order: the message is still taken and the gap counted ("sequence_gap").
* Deaths. NDEATH (the node's MQTT will) ends the node's session when its bdSeq matches the
  NBIRTH's (an older death, delivered late, is ignored); DDEATH ends a device's. Neither has
  readings.

A metric's time is its own timestamp, else the payload's (Sparkplug requires one of them);
without either it takes the receive time, as any MQTT message without a time does. Numeric
types become floats (signed integers are sent as unsigned two's complement and are turned
back), booleans 0 and 1; a null metric has no value and is skipped; other types (strings,
datasets, templates) are refused per metric ("not_numeric").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import DecodeError

from energyd.drivers.mqtt import _sparkplug_b_pb2 as pb
from energyd.errors import EnergydError

NAMESPACE = "spBv1.0"
_KINDS = {"NBIRTH", "NDATA", "NDEATH", "DBIRTH", "DDATA", "DDEATH", "NCMD", "DCMD"}
_SIGNED_32 = {1: 8, 2: 16, 3: 32}  # Int8, Int16, Int32 (int_value): bits
_INT64 = 4
_NUMERIC = {"int_value", "long_value", "float_value", "double_value", "boolean_value"}


class SparkplugProblem(EnergydError):
    """A message or metric refused; `reason` is a short metric label (see client.py's
    Rejected, which the mapper turns it into)."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Topic:
    group: str
    kind: str
    node: str
    device: str | None


def parse_topic(topic: str) -> Topic | None:
    """The parts of a Sparkplug B topic, or None for any other topic (STATE included)."""
    levels = topic.split("/")
    if len(levels) not in (4, 5) or levels[0] != NAMESPACE or levels[2] not in _KINDS:
        return None
    return Topic(levels[1], levels[2], levels[3], levels[4] if len(levels) == 5 else None)


@dataclass(frozen=True, slots=True)
class Metric:
    name: str
    value: float
    time_ms: int | None  # the metric's own time, else the payload's, else None


@dataclass(slots=True)
class _Names:
    """One birth's metrics: alias -> name, name -> data type."""

    aliases: dict[int, str] = field(default_factory=dict)
    types: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class _Node:
    bd_seq: int | None = None
    seq: int | None = None  # of the last message taken
    names: _Names = field(default_factory=_Names)
    devices: dict[str, _Names] = field(default_factory=dict)


class SparkplugDecoder:
    """Edge nodes' births, sequence numbers and deaths; turns messages into metrics.

    Not thread-safe: one caller (the MQTT network thread) feeds it in arrival order."""

    def __init__(self) -> None:
        self._nodes: dict[tuple[str, str], _Node] = {}

    def decode(self, topic: Topic, payload: bytes
               ) -> tuple[list[Metric], list[SparkplugProblem]]:
        """The metrics of one message, and what was wrong with it short of refusing it.
        Raises SparkplugProblem when the message is refused whole."""
        if topic.kind in ("NCMD", "DCMD"):
            return [], []  # commands to the node from other hosts: nothing measured
        try:
            message: Any = pb.Payload.FromString(payload)
        except DecodeError:
            raise SparkplugProblem("not_sparkplug", "not a Sparkplug B payload") from None
        key = (topic.group, topic.node)
        where = f"edge node {topic.group}/{topic.node}"
        problems: list[SparkplugProblem] = []
        node = self._nodes.get(key)
        if topic.kind == "NBIRTH":
            node = self._nodes[key] = _Node()
            for m in message.metrics:
                if m.name == "bdSeq" and m.WhichOneof("value") in _NUMERIC:
                    node.bd_seq = int(getattr(m, m.WhichOneof("value")))
            if message.seq != 0:
                problems.append(SparkplugProblem(
                    "sequence_gap", f"{where}: NBIRTH with seq {message.seq}, not 0"))
            node.seq = message.seq
            names = node.names = _birth(message)
        elif topic.kind == "NDEATH":
            bd_seq = next((int(getattr(m, m.WhichOneof("value"))) for m in message.metrics
                           if m.name == "bdSeq" and m.WhichOneof("value") in _NUMERIC), None)
            if node is not None and (bd_seq is None or bd_seq == node.bd_seq):
                del self._nodes[key]  # a death of an earlier session is ignored
            return [], []
        else:
            if node is None:
                node = self._nodes[key] = _Node()  # its birth came before energyd did
            self._check_seq(node, message.seq, where, topic.kind, problems)
            if topic.kind == "DBIRTH":
                assert topic.device is not None
                names = node.devices[topic.device] = _birth(message)
            elif topic.kind == "DDEATH":
                node.devices.pop(topic.device or "", None)
                return [], problems
            elif topic.kind == "DDATA":
                names = node.devices.get(topic.device or "", _Names())
            else:  # NDATA
                names = node.names
        payload_ms = message.timestamp if message.HasField("timestamp") else None
        metrics: list[Metric] = []
        for m in message.metrics:
            name = m.name
            if not name and m.HasField("alias"):
                name = names.aliases.get(m.alias)
            if not name:
                problems.append(SparkplugProblem(
                    "no_birth", f"{where}: {topic.kind} metric alias {m.alias} is not in a "
                    "birth certificate energyd has seen (it waits for the next birth)"))
                continue
            if m.is_null or m.WhichOneof("value") is None:
                continue
            try:
                value = _value(m, names.types.get(name, 0))
            except SparkplugProblem as exc:
                problems.append(SparkplugProblem(exc.reason, f"{where}: metric {name!r}: "
                                                 f"{exc.detail}"))
                continue
            time_ms = m.timestamp if m.HasField("timestamp") else payload_ms
            metrics.append(Metric(name, value, time_ms))
        return metrics, problems

    @staticmethod
    def _check_seq(node: _Node, seq: int, where: str, kind: str,
                   problems: list[SparkplugProblem]) -> None:
        if node.seq is not None and seq != (node.seq + 1) % 256:
            problems.append(SparkplugProblem(
                "sequence_gap", f"{where}: {kind} with seq {seq} where {(node.seq + 1) % 256} "
                "was due (a message lost or out of order)"))
        node.seq = seq


def _birth(message: Any) -> _Names:
    names = _Names()
    for m in message.metrics:
        if m.HasField("alias") and m.name:
            names.aliases[m.alias] = m.name
        if m.name:
            names.types[m.name] = m.datatype
    return names


def _value(m: Any, birth_type: int) -> float:
    kind = m.WhichOneof("value")
    if kind not in _NUMERIC:
        raise SparkplugProblem("not_numeric", f"a {kind.removesuffix('_value')}, not a number")
    raw = getattr(m, kind)
    datatype = m.datatype or birth_type
    if kind == "int_value" and datatype in _SIGNED_32:
        bits = _SIGNED_32[datatype]
        raw &= (1 << bits) - 1
        if raw >= 1 << (bits - 1):
            raw -= 1 << bits
    elif kind == "long_value" and datatype == _INT64 and raw >= 1 << 63:
        raw -= 1 << 64
    value = float(raw)
    if value != value or value in (float("inf"), float("-inf")):
        raise SparkplugProblem("not_finite", f"{value}")
    return value
