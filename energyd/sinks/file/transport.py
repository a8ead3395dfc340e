"""The `file` sink: each chunk of line protocol is appended to a file, and counts as
written once it is there (flushed, and fsynced unless `fsync: false`). Replays append the
same lines again; `influx write` of the file overwrites them with themselves, as InfluxDB
does for any replayed point. A write that fails (a full disk, a missing folder, no
permission) is retryable: the store keeps the data and the forwarder backs off."""

from __future__ import annotations

import contextlib
import os
from typing import Any, BinaryIO

from energyd.errors import SinkUnreachable


def make(sink: Any) -> FileTransport:
    return FileTransport(sink)


class FileTransport:
    def __init__(self, sink: Any):
        self.name = sink.name
        self.path = sink.path
        self._fsync = sink.fsync
        self._file: BinaryIO | None = None
        self._closed = False

    def write(self, body: bytes) -> None:
        if self._closed:
            raise SinkUnreachable(f"{self.name} ({self.path}): the transport is closed")
        try:
            if self._file is None:
                self._file = open(self.path, "ab")  # noqa: SIM115 (kept open across writes)
            self._file.write(body if body.endswith(b"\n") else body + b"\n")
            self._file.flush()
            if self._fsync:
                os.fsync(self._file.fileno())
        except OSError as exc:
            self._drop()
            raise SinkUnreachable(f"{self.name} ({self.path}): {exc.strerror or exc}") from None

    def _drop(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None

    def close(self) -> None:
        self._closed = True
        self._drop()
