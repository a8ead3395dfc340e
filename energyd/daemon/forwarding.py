"""Forwarding: one forwarder per configured InfluxDB sink, following its cursor in the store."""

from __future__ import annotations

from energyd.daemon.context import Component, Context


def build(ctx: Context) -> list[Component]:
    return []
