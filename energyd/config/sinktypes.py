"""What every sink's options have (energyd/sinks/<type>/options.py builds on it): a name
that keys its cursors, and how its forwarder paces and retries. Like config/types.py, this
imports only the vocabulary below the config."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, SecretStr, ValidationInfo, model_validator

from energyd.config.secrets import check_http_url, read_secret
from energyd.config.types import Duration, Strict, base_dir, within

__all__ = ["Sink", "http_url", "read_secret", "SecretStr", "ValidationInfo"]


class Sink(Strict):
    # keys its cursors in the store: renaming a sink starts it from the beginning
    name: str = Field("influxdb", pattern=r"^[A-Za-z0-9_.\-]+$", max_length=128)
    type: str
    chunk_size: int = Field(5000, ge=1, le=100000)  # points per write, at most
    max_points_per_second: float | None = Field(None, gt=0)  # bounds the backlog drain
    # once caught up, look for new rows this often
    interval: Annotated[Duration, within(0.01, 3600)] = 1.0
    timeout: Annotated[Duration, within(0.1, 600)] = 10.0
    # cap of the jittered delay after a failed write
    backoff_max: Annotated[Duration, within(0.01, 86400)] = 300.0

    @model_validator(mode="after")
    def _pacing(self) -> Sink:
        if self.interval <= 0 or self.timeout <= 0 or self.backoff_max <= 0:
            raise ValueError("interval, timeout and backoff_max must be positive")
        return self


def http_url(v: str) -> str:
    """An InfluxDB URL: http(s)://host:port[/path], with no credentials and no query."""
    parts = check_http_url(v)
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise ValueError("credentials do not belong in the URL: use token_file, "
                         "username and password_file")
    if parts.query or parts.fragment:
        raise ValueError("the URL takes no query string (InfluxDB 1.x's ?u=&p= would "
                         "hold a password): use username and password_file")
    return v


def secret(file: str | None, env: str | None, info: ValidationInfo) -> SecretStr | None:
    return read_secret(file, env, base_dir(info))
