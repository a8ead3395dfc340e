"""Accounting jobs: the hourly rollup, and recomputation of recent hours at start-up."""

from __future__ import annotations

from energyd.daemon.context import Component, Context


def build(ctx: Context) -> list[Component]:
    return []
