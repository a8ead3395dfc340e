"""Drivers as plugins: each folder's sample config parses, its README documents every option
it has, and the schema is assembled from the registry (drivers/README.md)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from energyd.config import load_config, parse_config
from energyd.config.types import Device
from energyd.drivers.registry import DRIVERS, plugin
from energyd.errors import ConfigError

FOLDER = Path(__file__).resolve().parent.parent / "energyd" / "drivers"


def options_of(model: type[BaseModel]) -> set[str]:
    """Every option of a driver: its device model's own fields and, recursively, those of
    the models they hold (its section, a register)."""
    names: set[str] = set()
    for name, info in model.model_fields.items():
        if name in Device.model_fields and name != "driver":
            continue  # the fields every device has, documented once in the project README
        names.add(name)
        for inner in re.findall(r"\w+", str(info.annotation)):
            sub = getattr(__import__(model.__module__, fromlist=[inner]), inner, None)
            if isinstance(sub, type) and issubclass(sub, BaseModel) and sub is not model:
                names |= options_of(sub)
    return names


def _beside_its_files(sample: Path, folder: Path) -> Path:
    """The sample copied into `folder` with a stand-in for each file it names under
    `secrets/` (a key, a certificate, a password: what no repository holds)."""
    text = sample.read_text(encoding="utf-8")
    for name in set(re.findall(r"\bsecrets/[\w.\-]+", text)):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text("stand-in\n", encoding="utf-8")
    copy = folder / "sample.yaml"
    copy.write_text(text, encoding="utf-8")
    return copy


@pytest.mark.parametrize("driver", sorted(DRIVERS))
def test_the_sample_config_of_each_driver_parses(driver: str, tmp_path: Path) -> None:
    config = load_config(_beside_its_files(FOLDER / driver / "sample.yaml", tmp_path))
    assert config.devices and {d.driver for d in config.devices} == {driver}
    for d in config.devices:
        assert isinstance(d, DRIVERS[driver].options)
        assert d.summary().startswith(driver)


@pytest.mark.parametrize("driver", sorted(DRIVERS))
def test_the_readme_of_each_driver_documents_every_option(driver: str) -> None:
    text = (FOLDER / driver / "README.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^\| `(\w+)` \|", text, flags=re.MULTILINE))
    options = options_of(DRIVERS[driver].options)
    assert len(options) > 3
    assert options <= documented, f"not in {driver}/README.md: {sorted(options - documented)}"


def test_each_registry_line_names_the_drivers_code() -> None:
    for name, entry in DRIVERS.items():
        assert entry.options.model_fields["driver"].annotation.__args__ == (name,)
        found = plugin(name)
        assert found.name == name
        # acquired one way only
        assert [found.polled is not None, found.subscribed,
                found.owned is not None].count(True) == 1, name


@pytest.mark.parametrize(("entry", "line", "message"), [
    ("  - {name: a, driver: bacnet, modbus: {host: 127.0.0.1}}\n", 2,
     "devices[0].driver: unknown driver 'bacnet': energyd has dlt645, modbus, mqtt, opcua"),
    ("  - {name: a, modbus: {host: 127.0.0.1}}\n", 2,
     "devices[0].driver: a device needs `driver:` (one of dlt645, modbus, mqtt, opcua)"),
    ("  - {name: a, drivr: modbus}\n", 2, "devices[0].drivr: unknown key (check its spelling)"),
    ("  - incomer-1\n", 2, "devices[0]: a device is a mapping of its keys"),
    ("  - name: a\n    driver: modbus\n    profile: eastron_sdm630\n"
     "    mqtt: {topic: x}\n    modbus: {host: 127.0.0.1}\n", 5,
     "devices[0].mqtt: driver modbus cannot have a `mqtt:` section"),
    ("  - name: a\n    driver: modbus\n    profile: eastron_sdm630\n", 2,
     "devices[0]: driver modbus needs a `modbus:` section"),
    ("  - name: a\n    driver: mqtt\n    interval: soon\n    mqtt: {topic: x, format: value}\n",
     4, "devices[0].interval: 'soon' is not a duration"),
])
def test_a_bad_device_entry_is_named_at_its_line(entry: str, line: int, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("mqtt: {host: 127.0.0.1}\ndevices:\n" + entry, "plant.yaml")
    shown = str(info.value)
    assert f"plant.yaml:{line + 1}: {message}" in shown, shown


def test_every_error_of_a_file_with_an_unknown_driver_is_reported() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("devices:\n"
                     "  - {name: a, driver: bacnet}\n"
                     "  - {name: b, driver: modbus, profile: eastron_sdm630,\n"
                     "     modbus: {host: 127.0.0.1, port: 0}}\n", "plant.yaml")
    paths = [p.path for p in info.value.problems]
    assert paths == ["devices[0].driver", "devices[1].modbus.port"]


def test_a_section_of_another_driver_reads_as_absent() -> None:
    config = parse_config("mqtt: {host: 127.0.0.1}\ndevices:\n"
                          "  - {name: a, driver: modbus, profile: eastron_sdm630,"
                          " modbus: {host: 127.0.0.1}}\n"
                          "  - {name: b, driver: mqtt, mqtt: {topic: x, format: value,"
                          " quantity: frequency_hz}}\n")
    modbus, mqtt = config.devices
    assert modbus.mqtt is None and mqtt.modbus is None
    assert modbus.modbus is not None and mqtt.mqtt is not None
    with pytest.raises(AttributeError):
        _ = modbus.no_such_thing
