"""The store's tables and their migrations.

The schema version is SQLite's `user_version`. A migration is appended, never edited: a
gateway in the field may open its store with any later energyd and must come out current.
Times are integer milliseconds since the epoch, UTC. `seq` columns are a change sequence
that sinks follow with their cursors, so a recomputed rollup is forwarded again.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from energyd.store.samples import SLOTS, pack_ids, pack_value

Migration = str | Callable[[sqlite3.Connection], None]


_SAMPLE_TABLES = """
    CREATE TABLE layouts (
        id INTEGER PRIMARY KEY,
        series BLOB NOT NULL UNIQUE  -- the series ids, little-endian int64s, in order
    );
    CREATE TABLE layout_series (
        series INTEGER NOT NULL REFERENCES series(id),
        layout INTEGER NOT NULL REFERENCES layouts(id),
        position INTEGER NOT NULL,
        PRIMARY KEY (series, layout)
    ) WITHOUT ROWID;
    -- AUTOINCREMENT: ids are never handed out twice (see readings in 1)
    CREATE TABLE samples (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        layout INTEGER NOT NULL REFERENCES layouts(id),
        time INTEGER NOT NULL,
        vals BLOB NOT NULL,  -- float64s, little-endian, one per series of the layout
        quality BLOB  -- one byte per value, NULL if all are good
    )"""
# made once the old readings are in: building an index at once is faster than growing it
_SAMPLE_INDEX = "CREATE UNIQUE INDEX samples_layout_time ON samples (layout, time)"


def _pack_readings(conn: sqlite3.Connection) -> None:
    """5: readings are packed into samples (energyd/store/samples.py). Each stored reading
    becomes a sample of its own with the same id, so what followed reading ids (sink cursors,
    rejected items, the hourly job's position) is multiplied by SLOTS and stays right."""
    for statement in _SAMPLE_TABLES.split(";"):
        conn.execute(statement)
    layouts = {}
    for (sid,) in conn.execute("SELECT DISTINCT series FROM readings").fetchall():
        lid = conn.execute("INSERT INTO layouts (series) VALUES (?)",
                           (pack_ids([sid]),)).lastrowid
        conn.execute("INSERT INTO layout_series (series, layout, position) VALUES (?, ?, 0)",
                     (sid, lid))
        layouts[sid] = lid
    last = 0
    while True:
        rows = conn.execute("SELECT id, series, time, value, quality FROM readings "
                            "WHERE id > ? ORDER BY id LIMIT 50000", (last,)).fetchall()
        if not rows:
            break
        conn.executemany(
            "INSERT INTO samples (id, layout, time, vals, quality) VALUES (?, ?, ?, ?, ?)",
            [(rid, layouts[sid], t, pack_value(v), bytes((q,)) if q else None)
             for rid, sid, t, v, q in rows])
        last = rows[-1][0]
    seq = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'readings'").fetchone()
    if seq is not None:  # the newest ids may have been deleted: they are not given out again
        conn.execute("DELETE FROM sqlite_sequence WHERE name = 'samples'")
        conn.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('samples', ?)", seq)
    conn.execute(_SAMPLE_INDEX)
    conn.execute("DROP TABLE readings")
    conn.execute("UPDATE sink_cursors SET position = position * ? "
                 "WHERE stream IN ('readings', 'readings.gap', 'readings.live')", (SLOTS,))
    conn.execute("UPDATE rejected SET item = item * ? WHERE stream = 'readings'", (SLOTS,))
    conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) * ? "
                 "WHERE key = 'accounting.readings_position'", (SLOTS,))


MIGRATIONS: list[Migration] = [
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
    _pack_readings,
    # 6: accounting: a statement below the metered energy of its period, accepted as it stands
    # by a person (who, when, why), so that the month it falls in can be final; a statement
    # replaced by a corrected one is kept, marked with the one that replaced it
    """
    ALTER TABLE invoices ADD COLUMN replaced_by INTEGER;
    CREATE TABLE statement_acceptances (
        id INTEGER PRIMARY KEY,
        statement INTEGER NOT NULL,
        accepted INTEGER NOT NULL,
        accepted_by TEXT NOT NULL,
        reason TEXT NOT NULL,
        finding TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX statement_acceptances_statement ON statement_acceptances (statement);
    """,
    # 7: a reading that came again for a series and time the store holds, with another value
    # (a conflict, unlike a replay of the same value) is kept here for inspection; the stored
    # first value stands. One row per distinct value, so a conflict replayed is kept once.
    """
    CREATE TABLE conflicts (
        id INTEGER PRIMARY KEY,
        series INTEGER NOT NULL REFERENCES series(id),
        time INTEGER NOT NULL,
        value REAL NOT NULL,  -- the value that came later, not taken
        quality INTEGER NOT NULL,
        stored REAL NOT NULL,  -- the value the store holds for that series and time
        origin TEXT NOT NULL,  -- how it came: 'acquisition' or 'import'
        found INTEGER NOT NULL,  -- when it was found, ms
        UNIQUE (series, time, value)
    );
    """,
    # 8: Scope 2 by the hour: granular certificates (a production interval of an hour or
    # less), each stored once under its registry id so that it is retired once whatever is
    # imported again; `origin` is the file and line it came from
    """
    CREATE TABLE granular_certificates (
        id TEXT PRIMARY KEY,
        production_start INTEGER NOT NULL,
        production_end INTEGER NOT NULL,
        wh REAL NOT NULL,
        market TEXT NOT NULL,
        device TEXT NOT NULL,
        technology TEXT NOT NULL,
        location TEXT NOT NULL DEFAULT '',
        storage_discharge INTEGER NOT NULL DEFAULT 0,
        registry TEXT NOT NULL DEFAULT '',
        backs TEXT NOT NULL DEFAULT '',  -- the annual instrument whose production it details
        imported INTEGER NOT NULL,
        origin TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX granular_certificates_start ON granular_certificates (production_start);
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)
