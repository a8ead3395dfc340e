"""The simulated plant: a Modbus gateway simulator per link, a DL/T 645 bus simulator per
serial server, a compressor station per MQTT station and an OPC UA compressor controller per
OPC UA endpoint of the config, bound to loopback ports written into the config that runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from ruamel.yaml import YAML

from energyd.config.schema import Config
from energyd.demo.broker import Broker
from energyd.demo.options import LOOPBACK, DemoError

LOAD_SHARE = 0.45  # full-production load of a simulated meter, as a share of its rating
MESSAGES_EVERY_S = 30.0  # a compressor publishes every 30 simulated seconds
# an OPC UA controller updates its variables as often as a compressor publishes: at the
# demo's 360x twelve changes a wall second, about one per publish of the subscription
OPCUA_UPDATE_EVERY_S = MESSAGES_EVERY_S


@dataclass
class Event:
    when: datetime
    text: str


@dataclass
class Plant:
    """The simulators and the daemon's effective configuration."""

    config_tree: dict[str, Any]
    meters: list[Any] = field(default_factory=list)  # MeterSimulator, Dlt645Simulator
    meter_of: dict[str, tuple[Any, int]] = field(default_factory=dict)  # device -> (sim, unit)
    stations: list[Any] = field(default_factory=list)  # CompressorStation
    controllers: list[Any] = field(default_factory=list)  # OpcuaController
    events: list[Event] = field(default_factory=list)


def read_tree(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DemoError(f"{path}: cannot read: {exc.strerror}") from None
    tree = YAML(typ="safe").load(text)
    if not isinstance(tree, dict):
        raise DemoError(f"{path}: not a configuration mapping")
    return tree


async def start_meters(plant: Plant, config: Config, clock: Any, tz: ZoneInfo) -> None:
    from energyd.simulators.meter import MeterSimulator

    links: dict[str, list[Any]] = {}
    for d in config.devices:
        if d.driver == "modbus" and d.enabled:
            assert d.modbus is not None
            if d.modbus.transport == "rtu":
                raise DemoError(f"device {d.name}: the demo simulates gateways on TCP only "
                                "(transport tcp or rtu_over_tcp)")
            links.setdefault(d.modbus.link, []).append(d)
    trees = {t["name"]: t for t in plant.config_tree.get("devices", [])}
    for seed, devices in enumerate(links.values(), start=1):
        units = [d.modbus.unit for d in devices]
        if len(set(units)) != len(units):
            raise DemoError(f"devices {', '.join(d.name for d in devices)} share a link and "
                            "a unit id")
        sim = MeterSimulator(
            profile={d.modbus.unit: d.profile or "eastron_sdm630" for d in devices},
            units=units, host=LOOPBACK, port=0,
            framer="rtu" if devices[0].modbus.transport == "rtu_over_tcp" else "socket",
            clock=clock, tz=tz, seed=seed,
            base_kw={d.modbus.unit: LOAD_SHARE * (d.rated_power_kw or 100.0) for d in devices})
        await sim.start()
        plant.meters.append(sim)
        for d in devices:
            plant.meter_of[d.name] = (sim, d.modbus.unit)
            entry = trees[d.name]
            entry["modbus"] = {**entry["modbus"], "host": LOOPBACK, "port": sim.port}
    await start_dlt645_buses(plant, config, clock)


async def start_dlt645_buses(plant: Plant, config: Config, clock: Any) -> None:
    from energyd.simulators.dlt645 import Dlt645Simulator

    buses: dict[str, list[Any]] = {}
    for d in config.devices:
        if d.driver == "dlt645" and d.enabled:
            assert d.dlt645 is not None
            if d.dlt645.transport != "tcp":
                raise DemoError(f"device {d.name}: the demo simulates DL/T 645 meters behind "
                                "serial servers on TCP only (transport tcp)")
            buses.setdefault(d.dlt645.link, []).append(d)
    trees = {t["name"]: t for t in plant.config_tree.get("devices", [])}
    for devices in buses.values():
        addresses = [d.dlt645.address for d in devices]
        if len(set(addresses)) != len(addresses):
            raise DemoError(f"devices {', '.join(d.name for d in devices)} share a bus and "
                            "a meter address")
        # one load for the bus: the simulator gives every meter on it the same shape
        base_kw = LOAD_SHARE * min(d.rated_power_kw or 100.0 for d in devices)
        if base_kw >= 80:
            raise DemoError(f"devices {', '.join(d.name for d in devices)}: the DL/T 645 "
                            "simulator's power format holds below 80 kW; rate the meters "
                            f"below {80 / LOAD_SHARE:.0f} kW")
        sim = Dlt645Simulator(addresses=addresses, host=LOOPBACK, port=0, clock=clock,
                              base_kw=base_kw)
        await sim.start()
        plant.meters.append(sim)
        for d in devices:
            entry = trees[d.name]
            entry["dlt645"] = {**entry["dlt645"], "host": LOOPBACK, "port": sim.port}


async def start_stations(plant: Plant, config: Config, broker: Broker, clock: Any,
                         tz: ZoneInfo) -> None:
    from energyd.simulators.air import AirSystem
    from energyd.simulators.compressor import CompressorStation

    stations: dict[str, list[Any]] = {}
    for d in config.devices:
        if d.driver == "mqtt" and d.enabled:
            assert d.mqtt is not None
            if not d.mqtt.station:
                raise DemoError(f"device {d.name}: the demo simulates MQTT devices as "
                                "compressor stations; give it `mqtt.station`")
            stations.setdefault(d.mqtt.station, []).append(d)
    for seed, (name, devices) in enumerate(stations.items(), start=1):
        prefix = devices[0].mqtt.topic.rsplit("/", 2)[0]
        system = AirSystem.build(len(devices), prefix=f"{name}-c", seed=seed, tz=tz)
        station = CompressorStation(broker=(LOOPBACK, broker.port), station=name,
                                    compressors=len(devices), clock=clock,
                                    rate=1.0 / MESSAGES_EVERY_S, topic_prefix=prefix,
                                    client_id=f"energyd-demo-{name}", seed=seed, system=system)
        for d in devices:
            if d.name not in station.devices or d.mqtt.topic != station.topic(d.name):
                raise DemoError(
                    f"device {d.name}: the simulated station {name!r} publishes "
                    f"{', '.join(station.topic(n) for n in station.devices)}; name its "
                    f"compressors {', '.join(station.devices)} with those topics")
        await station.__aenter__()
        plant.stations.append(station)
    plant.config_tree["mqtt"] = {**plant.config_tree.get("mqtt", {}),
                                 "host": LOOPBACK, "port": broker.port}



async def start_controllers(plant: Plant, config: Config, clock: Any, tz: ZoneInfo) -> None:
    """An OPC UA compressor controller per endpoint, serving one compressor per device on
    it (named as the device: the profile's `{object}`), on a free loopback port."""
    from energyd.simulators.air import AirSystem, Compressor
    from energyd.simulators.opcua import PROFILE, OpcuaController

    endpoints: dict[str, list[Any]] = {}
    for d in config.devices:
        if d.driver == "opcua" and d.enabled:
            assert d.opcua is not None
            o = d.opcua
            if o.security != "None" or o.username is not None:
                raise DemoError(f"device {d.name}: the demo's OPC UA controllers serve "
                                "security None without users")
            if o.profile != PROFILE or o.nodes or o.object != d.name:
                raise DemoError(f"device {d.name}: the demo simulates OPC UA devices as "
                                f"compressors read with `profile: {PROFILE}` and "
                                f"`object: {d.name}`")
            endpoints.setdefault(o.endpoint, []).append(d)
    trees = {t["name"]: t for t in plant.config_tree.get("devices", [])}
    for seed, devices in enumerate(endpoints.values(), start=1):
        system = AirSystem([Compressor(d.name, capacity_m3_min=10.0,
                                       rated_kw=d.rated_power_kw or 55.0,
                                       load_below_bar=6.6 - 0.1 * i,
                                       unload_above_bar=7.4 - 0.1 * i)
                            for i, d in enumerate(devices)], seed=100 + seed, tz=tz)
        controller = OpcuaController(host=LOOPBACK, station=f"opcua{seed}", clock=clock,
                                     rate=1.0 / OPCUA_UPDATE_EVERY_S, system=system,
                                     history=False)
        await controller.start()
        plant.controllers.append(controller)
        for d in devices:
            entry = trees[d.name]
            entry["opcua"] = {**entry["opcua"], "endpoint": controller.url}
