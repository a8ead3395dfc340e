"""Modbus acquisition: one owner per physical link (serial port or gateway host:port)."""

from __future__ import annotations

from energyd.daemon.context import Component, Context


def build(ctx: Context) -> list[Component]:
    return []
