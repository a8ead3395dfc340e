"""Drivers turn devices into Readings; nothing else. A folder per driver, one line per
driver in registry.py; README.md here says how to add one."""
