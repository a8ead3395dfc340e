"""DL/T 645-2007 driver: revenue meters on RS485, directly or through a transparent serial
server over TCP; read-only by construction (codec.py). README.md has every option.

    codec.py    frames: the three read requests, replies parsed, BCD
    profile.py  data identifiers -> quantities (profiles/*.yaml)
    link.py     one bus (serial or TCP) and the poller of one meter on it
    scan.py     finding the meters on a bus
    options.py  the `dlt645:` section of a device, and the shape of a profile file
    plugin.py   the driver as the daemon and the command line see it (drivers/contracts.py)

Kept free of imports here: the config schema imports options.py, and must not pull the
link and its serial library in with it.
"""
