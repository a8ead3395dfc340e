"""The building blocks every options model is made of: the config's own models and the
options a driver, sink or alert rule plugin declares in its folder. This module imports
only the vocabulary below the config, so a plugin's options can use it without a cycle.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, model_validator

from energyd.config.profiles import check_profile_ref
from energyd.config.secrets import check_secret_file
from energyd.config.units import AgeMonths, Duration, Size, size_within, within
from energyd.errors import ConfigError, Problem
from energyd.model import QUANTITIES, ROLES

__all__ = ["AgeMonths", "Device", "Duration", "FuelParameters", "ProblemsAt", "Role", "Size",
           "Strict", "base_dir", "check_quantity", "data_file_ref", "duplicates",
           "load_data_file", "path_value", "profile_ref", "secret_file", "size_within",
           "within"]

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


def profile_ref(v: str | None, info: ValidationInfo) -> str | None:
    """A built-in profile name stays as is; a file becomes an absolute path, checked now so
    a broken profile stops the start-up instead of a poll."""
    if v is None:
        return v
    return check_profile_ref(path_value(v), base_dir(info))


Data = TypeVar("Data", bound=BaseModel)


def load_data_file(path: Path, schema: type[Data]) -> Data:
    """A YAML data file a plugin's options name (a driver's profile, say), validated
    against the plugin's own model of it; ConfigError with the file's line of each problem.
    An edited file is read afresh (on a reload)."""
    try:
        stamp = path.stat().st_mtime_ns
    except OSError as exc:
        raise ConfigError([Problem(str(path), None, "", f"cannot read the file: "
                                                       f"{exc.strerror}")]) from None
    return _load_data_file(str(path), schema, stamp)  # type: ignore[return-value]


@functools.lru_cache(maxsize=64)
def _load_data_file(path_text: str, schema: type[BaseModel], _stamp: int) -> BaseModel:
    return validated_data_file(path_text, schema)[1]


def validated_data_file(path_text: str, schema: type[BaseModel]) -> tuple[Any, BaseModel]:
    """The YAML file at `path_text` (its tree, with line numbers for checks of one's own)
    and its data validated against `schema`, uncached; ConfigError with the file's line of
    each problem, as the config's own loader reports them."""
    from energyd.config.loader import _locate, _plain_checked, parse_yaml, read_text

    tree = parse_yaml(read_text(Path(path_text)), path_text)
    if not isinstance(tree, dict):
        raise ConfigError([Problem(path_text, 1, "", "the file must hold a mapping")])
    try:
        return tree, schema.model_validate(_plain_checked(tree, path_text))
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False, include_input=False):
            loc = tuple(part for part in err["loc"] if part != "[key]")
            line, where = _locate(tree, loc)
            message = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                message = "unknown key (check its spelling)"
            problems.append(Problem(path_text, line, where, message))
        raise ConfigError(problems) from None


def data_file_ref(ref: str, info: ValidationInfo, builtin_dir: Path, schema: type[BaseModel],
                  what: str) -> str:
    """For an option naming a data file: a built-in name (a YAML file in `builtin_dir`)
    stays as is, a path becomes absolute; either is loaded now against `schema`, so a
    broken file stops the start-up (and check-config) at the option's line, not a poll."""
    ref = path_value(ref)
    builtin = builtin_dir / f"{ref}.yaml"
    if "/" not in ref and builtin.is_file():
        path, resolved = builtin, ref
    else:
        path = Path(ref).expanduser()
        folder = base_dir(info)
        if not path.is_absolute() and folder is not None:
            path = folder / path
        resolved = str(path)
    try:
        load_data_file(path, schema)
    except ConfigError as exc:
        raise ValueError(f"{what} has errors: " + "; ".join(map(str, exc.problems))) from None
    return resolved


# --- what every device has, whatever its driver ----------------------------------------------


class FuelParameters(Strict):
    """tCO2 = quantity x NCV x carbon content x oxidation x 44/12."""

    quantity: Literal["fuel_volume_m3", "fuel_mass_t"]
    # converts the counter's unit into the NCV's unit (e.g. 1e-4 for m3 -> 10^4 Nm3)
    unit_factor: float = Field(1.0, gt=0)
    ncv_gj_per_unit: float = Field(gt=0)
    carbon_content_tc_per_gj: float = Field(gt=0)
    oxidation: float = Field(1.0, gt=0, le=1)
    source: str = ""


class Device(Strict):
    """The fields every device has. A driver's options model (energyd/drivers/<name>/
    options.py) subclasses it with `driver: Literal["<name>"]` and its `<name>:` section,
    optional in the type and required by the check below, so a missing section is named."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$", max_length=128)
    role: Role = "submeter"
    driver: str
    interval: Annotated[Duration, within(0.01, 86400)] = 10.0
    enabled: bool = True
    # Accounting: used to tell a counter wrap or reset from real energy.
    rated_power_kw: float | None = Field(None, gt=0)
    counter_rollover: float | None = Field(None, gt=0)  # value at which the counter wraps to 0
    # A fuel counter's most plausible advance per hour, in its own unit (m3/h, t/h); the
    # rate limit of fuel counters as rated_power_kw is of kWh counters.
    rated_flow: float | None = Field(None, gt=0)
    fuel: FuelParameters | None = None

    # top-level sections of the file this driver's devices need, and what each is
    # ({"mqtt": "broker"}: the MQTT broker's connection)
    needs: ClassVar[dict[str, str]] = {}
    # every driver's section name, filled as the drivers' models are defined
    sections: ClassVar[set[str]] = set()

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        Device.sections.update(getattr(cls.model_fields["driver"].annotation, "__args__", ()))

    def __getattr__(self, name: str) -> Any:
        # A device of another driver has no `<driver>:` section: code that looks for one
        # driver's section on every device (air stations, alert templates) reads None.
        if name in Device.sections:
            return None
        return super().__getattr__(name)  # type: ignore[misc]

    def summary(self) -> str:
        """The device's line in `energyd check-config` (its driver's model says)."""
        raise NotImplementedError

    @model_validator(mode="before")
    @classmethod
    def _foreign_sections(cls, data: Any) -> Any:
        if isinstance(data, dict):
            driver = data.get("driver")
            problems: list[tuple[tuple[str | int, ...], str]] = [
                ((key,), f"driver {driver} cannot have a `{key}:` section")
                for key in data if key in Device.sections and key != driver]
            if problems:
                raise ProblemsAt(problems)
        return data

    @model_validator(mode="after")
    def _common(self) -> Device:
        if getattr(self, self.driver, None) is None:
            raise ValueError(f"driver {self.driver} needs a `{self.driver}:` section")
        if self.interval <= 0:
            raise ValueError("interval must be positive")
        if self.rated_flow is not None and self.role != "fuel":
            raise ValueError("rated_flow is a fuel counter's limit (role fuel); an electricity "
                             "meter takes rated_power_kw")
        return self
