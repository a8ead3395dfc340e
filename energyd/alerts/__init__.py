"""Alerts: rules over energy data, episodes that fire once, and their dispatch.

    rules/        one plugin per rule type (its options and hooks), a registry, and the
                  conditions as pure functions over plain data (rules/conditions.py)
    episodes.py   the one episode tracker: rules' verdicts, sinks' rejections and the
                  statements that disagree with the meter -> episodes (start once, end
                  once), kept through the store's episodes repository
    engine.py     configured rules applied to the store's rollups and to live readings
    statements.py the reconciliation rule's input: accounting's findings as typed values
    dispatch.py   MQTT, webhook and log channels, each independent
    outbox.py     events not yet delivered, kept through the store's outbox repository
    report.py     what `energyd alerts` shows

The daemon wiring is energyd/daemon/alerting.py. Nothing is imported here, so that the
configuration schema can assemble the rule options without pulling in the engine.
"""
