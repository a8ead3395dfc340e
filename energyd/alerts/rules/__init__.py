"""Alert rule types as plugins: one module per type, listed once in registry.py.

    conditions.py     the conditions, pure functions over plain data (what each type computes)
    base.py           what every rule shares: its common options, the observation it makes,
                      the hooks it may have and the context the engine gives it
    spike.py ...      one module per type: its options model (only its own keys) and the
                      hooks it needs (on readings, on the hour, periodic)
    registry.py       type -> (options model, rule), one line per type

A rule module imports only its contracts (energyd.config.types, energyd.config.hours,
energyd.model and the two shared modules here), so the configuration schema can assemble
its union of rule options without pulling in the engine or the store. Nothing is imported
here, for the same reason.
"""
