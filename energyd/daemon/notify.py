"""systemd's notify protocol (sd_notify): READY, STATUS, WATCHDOG, RELOADING, STOPPING.

Twenty lines over a datagram socket, so no library: when NOTIFY_SOCKET is unset (not under
systemd, or Type=simple) every call does nothing.
"""

from __future__ import annotations

import contextlib
import os
import socket


class Notifier:
    def __init__(self, address: str | None = None):
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET")
        self._address = None
        if address:
            # a leading @ names a socket in the abstract namespace
            self._address = "\0" + address[1:] if address.startswith("@") else address
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        self.watchdog_interval: float | None = None
        if usec and usec.isdigit() and (not pid or pid == str(os.getpid())):
            # ping at half the timeout, as sd_watchdog_enabled(3) advises
            self.watchdog_interval = int(usec) / 2_000_000

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def send(self, *fields: str) -> None:
        if self._address is None:
            return
        # systemd gone away: nothing useful to do
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock, \
                contextlib.suppress(OSError):
            sock.sendto("\n".join(fields).encode(), self._address)

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def reloading(self, monotonic_usec: int) -> None:
        self.send("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec}")

    def stopping(self) -> None:
        self.send("STOPPING=1")
