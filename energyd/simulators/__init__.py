"""Simulated devices driven by energyd's own profiles (see meter.py for the Python API)."""

from energyd.simulators.meter import Faults, MeterSimulator, SimulatedMeter

__all__ = ["Faults", "MeterSimulator", "SimulatedMeter"]
