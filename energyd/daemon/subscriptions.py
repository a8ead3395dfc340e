"""MQTT acquisition: the daemon's one broker connection and its subscriptions."""

from __future__ import annotations

from energyd.daemon.context import Component, Context


def build(ctx: Context) -> list[Component]:
    return []
