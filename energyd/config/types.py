"""The building blocks every options model is made of: the config's own models and the
options a driver, sink or alert rule plugin declares in its folder. This module imports
only the vocabulary below the config, so a plugin's options can use it without a cycle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationInfo

from energyd.config.secrets import check_secret_file
from energyd.config.units import AgeMonths, Duration, Size, size_within, within
from energyd.model import QUANTITIES, ROLES

__all__ = ["AgeMonths", "Duration", "ProblemsAt", "Role", "Size", "Strict", "base_dir",
           "check_quantity", "duplicates", "path_value", "secret_file", "size_within", "within"]

Role = Literal["grid_import", "submeter", "generation", "compressor", "fuel"]
assert set(ROLES) == set(Role.__args__)  # type: ignore[attr-defined]


class Strict(BaseModel):
    # NaN and infinity are never a sane setting: `scale: .inf` would poison every reading
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ProblemsAt(ValueError):
    """Problems a model-level check finds, each at the path (below the model) of the value
    to fix, so the loader reports the line of a duplicate or unknown name, not the line of
    the section that holds it."""

    def __init__(self, problems: list[tuple[tuple[str | int, ...], str]]):
        self.problems = problems
        super().__init__("; ".join(message for _, message in problems))


def duplicates(names: list[str], what: str, key: str = "name"
                ) -> list[tuple[tuple[str | int, ...], str]]:
    first: dict[str, int] = {}
    found: list[tuple[tuple[str | int, ...], str]] = []
    for i, name in enumerate(names):
        if name in first:
            found.append(((i, key), f"{what} {name!r} is already used by entry "
                                    f"{first[name] + 1}: {what}s must be unique"))
        else:
            first[name] = i
    return found


def base_dir(info: ValidationInfo) -> Path | None:
    return (info.context or {}).get("base_dir")


def path_value(v: Any) -> Any:
    """A path the system can take: the OS would refuse these with an error, not a message."""
    if v is None:
        return v
    text = str(v)
    if "\x00" in text:
        raise ValueError("a path cannot hold a NUL character")
    if len(text) > 4095 or any(len(part) > 255 for part in text.split("/")):
        raise ValueError(f"path {text[:40]!r}... is longer than the system allows")
    return v


def secret_file(cls: type, v: str | None, info: ValidationInfo) -> str | None:
    return check_secret_file(path_value(v), base_dir(info))


def check_quantity(name: str) -> str:
    if name not in QUANTITIES:
        raise ValueError(f"unknown quantity {name!r} (see the quantity vocabulary in DESIGN.md)")
    return name
