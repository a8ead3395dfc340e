"""Options of the `influxdb_v2` sink (README.md beside this file)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import PrivateAttr, SecretStr, ValidationInfo, field_validator, model_validator

from energyd.config.sinktypes import Sink, http_url, secret
from energyd.config.types import secret_file


class InfluxDBv2(Sink):
    """The v2 write API: InfluxDB 2.x, 3.x, Cloud, 1.8+ (token `user:password`, org `-`,
    bucket `db/rp`) and servers that take it (VictoriaMetrics). The token comes from
    `token_file` / `token_env`, never from the YAML or the URL."""

    type: Literal["influxdb_v2"] = "influxdb_v2"
    api: ClassVar[str] = "v2"
    url: str  # http(s)://host:port, without credentials
    org: str | None = None  # "-" when unset (InfluxDB 1.8+, VictoriaMetrics)
    bucket: str
    token_file: str | None = None
    token_env: str | None = None
    gzip: bool = True
    _token: SecretStr | None = PrivateAttr(None)

    _url = field_validator("url")(classmethod(lambda cls, v: http_url(v)))
    _files = field_validator("token_file")(classmethod(secret_file))

    @model_validator(mode="after")
    def _secrets(self, info: ValidationInfo) -> InfluxDBv2:
        self._token = secret(self.token_file, self.token_env, info)
        return self

    @property
    def token(self) -> SecretStr | None:
        return self._token


OPTIONS = InfluxDBv2
