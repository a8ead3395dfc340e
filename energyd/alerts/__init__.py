"""Alerts: rules over energy data, episodes that fire once, and their dispatch.

    rules.py      the conditions, pure functions over plain data
    episodes.py   verdicts -> episodes (start once, end once), kept in the store
    engine.py     configured rules applied to the store's rollups and to live readings
    dispatch.py   MQTT, webhook and log channels, each independent
    report.py     what `energyd alerts` shows

The daemon wiring is energyd/daemon/alerting.py. Nothing is imported here, so that the
configuration schema can use rules.py without pulling in the engine.
"""
