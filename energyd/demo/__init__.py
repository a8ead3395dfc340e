"""`energyd demo`: a whole simulated plant in one process, with time accelerated.

    options.py    what a run is given (working directory, speed, InfluxDB target)
    broker.py     the MQTT broker: Mosquitto as a child process, or amqtt in-process
    plant.py      the meter and compressor simulators, bound to loopback ports
    scenario.py   when the plant starts, and the spike and the leak on its way
    view.py       the terminal view, drawn from the status API (daemon/status.py)
    run.py        all of it together around the real daemon

What runs, all on loopback ports picked at start:

- a Modbus gateway simulator (energyd.simulators.meter) for every `host:port` of the
  config's Modbus devices, serving each unit with the device's own profile; a meter's
  full-production load is 45 % of its `rated_power_kw`;
- a DL/T 645 bus simulator (energyd.simulators.dlt645) for every serial server
  (`host:port`) of the config's DL/T 645 devices, one meter per address, with the same
  load share (below 80 kW: the standard's power format);
- an MQTT broker: Mosquitto when it is installed, else the embedded amqtt;
- a compressor station (energyd.simulators.compressor) for every `station` of the config's
  MQTT devices, publishing to the topics the config subscribes to;
- the real daemon (energyd.daemon.app.Daemon) polling all of it into a store in the
  working directory, rolling hours into MWh and tCO2 and raising alerts, with an
  AcceleratedClock (360x by default: a simulated hour every 10 seconds);
- with `influx`, the daemon also forwards to that InfluxDB, so the dashboards fill.

The scenario: the plant starts on a weekday at 20:00 site time, at least half a day in
the past (so that, forwarded to InfluxDB, the data sits in Grafana's usual ranges). One
simulated hour in, the first grid_import meter draws four times its load for an hour (the
spike); two hours in, the first compressor station starts leaking 10 m3/min, after the
shift has ended (the leak). The config's alert rules (config/demo.yaml: a threshold on the
incomer, off-shift load on the compressors) report both.

The terminal view shows the devices with their current kW and status, the latest hourly
rows (MWh, source, tCO2) and the alerts. Ctrl-C (or `duration`) stops everything cleanly;
the store, the configuration that ran and the logs stay in the working directory.
"""

from energyd.demo.options import SOURCE_CONFIG, DemoError, DemoOptions, InfluxTarget
from energyd.demo.run import run_demo
from energyd.demo.scenario import demo_start

__all__ = ["SOURCE_CONFIG", "DemoError", "DemoOptions", "InfluxTarget", "demo_start",
           "run_demo"]
