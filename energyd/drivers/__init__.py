"""Drivers turn devices into Readings; nothing else (see modbus.py)."""
