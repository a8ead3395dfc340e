"""DL/T 645-2007 driver: revenue meters on RS485, directly or through a transparent serial
server over TCP; read-only by construction (codec.py). README.md has every option."""

from energyd.drivers.dlt645.codec import ReadCode
from energyd.drivers.dlt645.link import BusSettings, Dlt645Link, MeterPoller, read_device
from energyd.drivers.dlt645.profile import Dlt645Profile, load_profile

__all__ = ["BusSettings", "Dlt645Link", "Dlt645Profile", "MeterPoller", "ReadCode",
           "load_profile", "read_device"]
