"""Every driver energyd has: one line each, its options model and the module of its code.

The config builds the `devices:` entries from the options models (a union told apart by
`driver:`); the daemon and the command line find a driver's code through `plugin()`. The
code is imported only when asked for, so the config never loads pymodbus, paho or asyncua.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, NamedTuple

from energyd.config.types import Device
from energyd.drivers.dlt645.options import Dlt645Device
from energyd.drivers.modbus.options import ModbusDevice
from energyd.drivers.mqtt.options import MqttDevice
from energyd.drivers.opcua.options import OpcuaDevice

if TYPE_CHECKING:
    from energyd.drivers.contracts import DriverPlugin


class Entry(NamedTuple):
    options: type[Device]  # its `driver: Literal[...]` is the driver's name
    code: str  # the module whose PLUGIN is the driver's DriverPlugin


DRIVERS: dict[str, Entry] = {
    "dlt645": Entry(Dlt645Device, "energyd.drivers.dlt645.plugin"),
    "modbus": Entry(ModbusDevice, "energyd.drivers.modbus.plugin"),
    "mqtt": Entry(MqttDevice, "energyd.drivers.mqtt.plugin"),
    "opcua": Entry(OpcuaDevice, "energyd.drivers.opcua.plugin"),
}


def plugin(driver: str) -> DriverPlugin:
    """The driver's code: how it is acquired, its one-shot read, its scan (contracts.py)."""
    found: DriverPlugin = importlib.import_module(DRIVERS[driver].code).PLUGIN
    return found


def plugins() -> list[DriverPlugin]:
    return [plugin(name) for name in DRIVERS]
