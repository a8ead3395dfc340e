"""The MQTT driver as energyd sees it (energyd/drivers/contracts.py): its devices' readings
come over the daemon's one broker connection (the file's top-level `mqtt:`), mapped by
client.PayloadMapper; there is nothing to read on demand."""

from __future__ import annotations

from energyd.drivers.contracts import DriverPlugin

PLUGIN = DriverPlugin(name="mqtt", subscribed=True)
