"""Options of the `influxdb_v1` sink (README.md beside this file)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import PrivateAttr, SecretStr, ValidationInfo, field_validator, model_validator

from energyd.config.sinktypes import Sink, http_url, secret
from energyd.config.types import secret_file


class InfluxDBv1(Sink):
    """InfluxDB 1.x `/write`: `database`, `retention_policy`, `username` and a password from
    `password_file` / `password_env` (never from the YAML or the URL)."""

    type: Literal["influxdb_v1"] = "influxdb_v1"
    api: ClassVar[str] = "v1"
    url: str  # http(s)://host:port, without credentials
    database: str
    retention_policy: str | None = None  # the database's default when unset
    username: str | None = None
    password_file: str | None = None
    password_env: str | None = None
    gzip: bool = True
    _password: SecretStr | None = PrivateAttr(None)

    _url = field_validator("url")(classmethod(lambda cls, v: http_url(v)))
    _files = field_validator("password_file")(classmethod(secret_file))

    @model_validator(mode="after")
    def _secrets(self, info: ValidationInfo) -> InfluxDBv1:
        self._password = secret(self.password_file, self.password_env, info)
        if self._password is not None and self.username is None:
            raise ValueError("a password needs a `username:`")
        return self

    @property
    def password(self) -> SecretStr | None:
        return self._password


OPTIONS = InfluxDBv1
