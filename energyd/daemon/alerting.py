"""Alert evaluation and dispatch."""

from __future__ import annotations

from energyd.daemon.context import Component, Context


def build(ctx: Context) -> list[Component]:
    return []
