"""energyd's exceptions. Lower libraries' errors are mapped onto these at the edge.

    EnergydError
    ├── ConfigError           a configuration that cannot run; carries every problem found
    ├── StoreError            the local store cannot do what was asked
    │   ├── StoreFull         the disk (or a size limit) is full: retryable once space is freed
    │   ├── StoreCorrupt      the file is not an intact store; nothing was written to it
    │   └── ImportRejected    a CSV import refused whole; carries the bad rows
    ├── DeviceError           a device did not answer as expected (retryable: try next poll)
    │   ├── DeviceTimeout     no reply in time
    │   ├── DeviceRefused     an exception reply (illegal address, busy, ...)
    │   └── DeviceGarbled     a reply that makes no sense (wrong length, unknown exception)
    └── SinkError             a server did not take a chunk
        ├── SinkRetryable     the chunk is tried again later (`reason` names why)
        │   ├── SinkUnreachable   no reply: connection refused or reset, timeout, TLS
        │   ├── SinkThrottled     429: wait at least its Retry-After
        │   ├── SinkServerError   5xx
        │   └── SinkRefused       408, 401, 403, 404: a configuration to fix, data kept
        └── SinkRejected      a 4xx that will never succeed: the points are isolated

`retryable` is part of the type, so a caller never parses messages to decide.
"""

from __future__ import annotations

from dataclasses import dataclass


class EnergydError(Exception):
    retryable: bool = False


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an input, located as precisely as the input allows."""

    file: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigError(EnergydError):
    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class LineProblems:
    """Collects what is wrong with an input file, line by line. Every bad line is counted;
    the first `limit` are kept to report, so a broken million-row file stays readable."""

    def __init__(self, filename: str, limit: int = 50):
        self.filename = filename
        self.limit = limit
        self.problems: list[Problem] = []
        self.count = 0

    def __call__(self, line: int, message: str) -> None:
        self.count += 1
        if len(self.problems) < self.limit:
            self.problems.append(Problem(self.filename, line, "", message))

    def __bool__(self) -> bool:
        return self.count > 0

    def rejected(self) -> ImportRejected:
        return ImportRejected(sorted(self.problems, key=lambda p: p.line or 0), self.count)


class StoreError(EnergydError):
    pass


class StoreFull(StoreError):
    retryable = True


class StoreCorrupt(StoreError):
    pass


class ImportRejected(StoreError):
    def __init__(self, problems: list[Problem], total_bad: int):
        self.problems = problems
        self.total_bad = total_bad
        lines = [str(p) for p in problems]
        if total_bad > len(problems):
            lines.append(f"... and {total_bad - len(problems)} more bad rows")
        lines.append("nothing was imported")
        super().__init__("\n".join(lines))


class DeviceError(EnergydError):
    retryable = True


class DeviceTimeout(DeviceError):
    pass


class DeviceGarbled(DeviceError):
    """A reply that passed the checksum but cannot be what the device meant: a failed poll,
    never a reason to change how the device is read."""


class DeviceRefused(DeviceError):
    def __init__(self, message: str, exception_code: int | None = None):
        self.exception_code = exception_code
        super().__init__(message)


class SinkError(EnergydError):
    pass


class SinkRetryable(SinkError):
    retryable = True
    # the label of energyd_sink_errors_total{reason}
    reason = "connection"

    def __init__(self, message: str, retry_after: float | None = None):
        self.retry_after = retry_after
        super().__init__(message)


class SinkUnreachable(SinkRetryable):
    reason = "connection"


class SinkThrottled(SinkRetryable):
    reason = "throttled"


class SinkServerError(SinkRetryable):
    reason = "server"


class SinkRefused(SinkRetryable):
    reason = "refused"


class SinkRejected(SinkError):
    retryable = False

    def __init__(self, message: str, status: int | None = None):
        self.status = status
        super().__init__(message)
