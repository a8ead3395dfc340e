"""Simulators stand in for devices on this machine only: a simulated meter or compressor
station must never appear on a plant network, where a real system could take its numbers
for real ones. Only literal loopback addresses pass (no name lookups)."""

from __future__ import annotations

import ipaddress


def check_loopback(host: str, what: str = "address") -> None:
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise ValueError(f"{what} {host!r} is not a loopback address (127.0.0.0/8 or ::1)")
