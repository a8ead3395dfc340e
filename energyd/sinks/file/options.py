"""Options of the `file` sink (README.md beside this file)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from energyd.config.sinktypes import Sink
from energyd.config.types import base_dir, path_value


class FileSink(Sink):
    """Line protocol appended to a local file: for plants without a network to InfluxDB
    (the file is carried out and written with `influx write`) and for debugging."""

    name: str = Field("file", pattern=r"^[A-Za-z0-9_.\-]+$", max_length=128)
    type: Literal["file"] = "file"
    path: Path  # relative paths are taken from the config file's folder
    fsync: bool = True  # a chunk counts as written once it is on disk

    @field_validator("path", mode="before")
    @classmethod
    def _path(cls, v: object, info: ValidationInfo) -> object:
        v = path_value(v)
        if v is None:
            return v
        p = Path(str(v)).expanduser()
        where = base_dir(info)
        return p if p.is_absolute() or where is None else Path(where) / p


OPTIONS = FileSink
