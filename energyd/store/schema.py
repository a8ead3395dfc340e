"""The store's tables and their migrations.

The schema version is SQLite's `user_version`. A migration is appended, never edited: a
gateway in the field may open its store with any later energyd and must come out current.
Times are integer milliseconds since the epoch, UTC. `seq` columns are a change sequence
that sinks follow with their cursors, so a recomputed rollup is forwarded again.
"""

from __future__ import annotations

MIGRATIONS: list[str] = [
    # 1: the foundation
    """
    CREATE TABLE series (
        id INTEGER PRIMARY KEY,
        device TEXT NOT NULL,
        quantity TEXT NOT NULL,
        UNIQUE (device, quantity)
    );
    -- AUTOINCREMENT: ids are never handed out twice, even after retention or the quota
    -- removed the newest rows, so a sink's cursor can never skip a new reading
    CREATE TABLE readings (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        series INTEGER NOT NULL REFERENCES series(id),
        time INTEGER NOT NULL,
        value REAL NOT NULL,
        quality INTEGER NOT NULL DEFAULT 0
    );
    CREATE UNIQUE INDEX readings_series_time ON readings (series, time);
    CREATE TABLE sink_cursors (
        sink TEXT NOT NULL,
        stream TEXT NOT NULL,
        position INTEGER NOT NULL,
        updated INTEGER NOT NULL,
        PRIMARY KEY (sink, stream)
    );
    CREATE TABLE rejected (
        id INTEGER PRIMARY KEY,
        sink TEXT NOT NULL,
        stream TEXT NOT NULL,
        item INTEGER NOT NULL,
        message TEXT NOT NULL,
        time INTEGER NOT NULL
    );
    CREATE TABLE device_status (
        device TEXT PRIMARY KEY,
        last_poll INTEGER,
        last_success INTEGER,
        last_error TEXT,
        last_error_time INTEGER,
        polls INTEGER NOT NULL DEFAULT 0,
        errors INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE rollups (
        device TEXT NOT NULL,
        hour INTEGER NOT NULL,
        mwh REAL NOT NULL,
        source TEXT NOT NULL,
        coverage REAL NOT NULL,
        tco2_location REAL,
        tco2_market REAL,
        ef_location REAL,
        ef_id TEXT,
        detail TEXT NOT NULL DEFAULT '{}',
        seq INTEGER NOT NULL,
        PRIMARY KEY (device, hour)
    );
    CREATE INDEX rollups_seq ON rollups (seq);
    CREATE TABLE invoices (
        id INTEGER PRIMARY KEY,
        account TEXT NOT NULL,
        period_start INTEGER NOT NULL,
        period_end INTEGER NOT NULL,
        energy_kwh REAL NOT NULL,
        supplier TEXT,
        document TEXT,
        imported INTEGER NOT NULL
    );
    CREATE TABLE alerts (
        id INTEGER PRIMARY KEY,
        rule TEXT NOT NULL,
        device TEXT NOT NULL,
        state TEXT NOT NULL,
        started INTEGER NOT NULL,
        ended INTEGER,
        detail TEXT NOT NULL DEFAULT '{}',
        seq INTEGER NOT NULL
    );
    CREATE INDEX alerts_seq ON alerts (seq);
    CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    INSERT INTO meta (key, value) VALUES ('seq', '0');
    """,
    # 2: compressed air: hourly energy, free air delivered and specific power, per compressor
    # and per station (device = the station's name for the station's row)
    """
    CREATE TABLE air_hourly (
        device TEXT NOT NULL,
        hour INTEGER NOT NULL,
        kwh REAL NOT NULL,
        m3 REAL NOT NULL,
        specific_power REAL,
        loaded_share REAL,
        detail TEXT NOT NULL DEFAULT '{}',
        seq INTEGER NOT NULL,
        PRIMARY KEY (device, hour)
    );
    CREATE INDEX air_hourly_seq ON air_hourly (seq);
    """,
    # 3: accounting: certificate MWh allocated to purchased device-hours (market-based tCO2),
    # kept per hour so a recompute knows what earlier hours already used
    """
    CREATE TABLE certificate_allocations (
        certificate TEXT NOT NULL,
        device TEXT NOT NULL,
        hour INTEGER NOT NULL,
        mwh REAL NOT NULL,
        PRIMARY KEY (certificate, device, hour)
    );
    CREATE INDEX certificate_allocations_hour ON certificate_allocations (hour);
    CREATE INDEX invoices_account ON invoices (account, period_start);
    """,
    # 4: alert events a channel (webhook, MQTT) has not delivered yet, so that a restart or a
    # crash sends them again instead of losing them
    """
    CREATE TABLE alert_outbox (
        id INTEGER PRIMARY KEY,
        channel TEXT NOT NULL,
        payload TEXT NOT NULL,
        created INTEGER NOT NULL
    );
    CREATE INDEX alert_outbox_channel ON alert_outbox (channel, id);
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)
