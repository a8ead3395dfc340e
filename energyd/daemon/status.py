"""`energyd status`: read from the store what the running daemon has recorded there.

It opens the store beside the running daemon (WAL lets a reader in while it writes), so it
works whether or not the daemon is up, and shows how stale the data is.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from rich.table import Table

from energyd.alerts.outbox import Outbox
from energyd.config.schema import Config
from energyd.config.secrets import redact_url
from energyd.model import from_ms
from energyd.store.sqlite import STREAMS, Store


def _iso(ms: int | None) -> str | None:
    return from_ms(ms).isoformat(timespec="seconds") if ms is not None else None


def collect_status(config: Config, now: datetime | None = None) -> dict[str, Any]:
    now = now or datetime.now(UTC)
    now_ms = int(now.timestamp() * 1000)
    with Store.open(config.storage.path, must_exist=True) as store:
        polls = store.device_status()
        devices = []
        for d in config.devices:
            last = None
            for device, quantity in store.series():
                if device == d.name:
                    r = store.latest(device, quantity)
                    if r is not None and (last is None or r.time_ms > last):
                        last = r.time_ms
            p = polls.get(d.name, {})
            devices.append({
                "device": d.name, "role": d.role, "driver": d.driver,
                "last_poll": _iso(p.get("last_poll")),
                "last_reading": _iso(last),
                "last_reading_age_s": round((now_ms - last) / 1000, 1) if last else None,
                "last_error": p.get("last_error"),
                "last_error_time": _iso(p.get("last_error_time")),
                "polls": p.get("polls", 0), "errors": p.get("errors", 0),
            })
        sinks = []
        for s in config.influxdb:
            entry: dict[str, Any] = {"sink": s.name, "api": s.api, "url": redact_url(s.url)}
            for stream in STREAMS:
                b = store.backlog(s.name, stream)
                entry[stream] = {
                    "backlog": b.count,
                    "oldest_unsent": _iso(b.oldest_ms),
                    "oldest_unsent_age_s":
                        round((now_ms - b.oldest_ms) / 1000, 1) if b.oldest_ms else None,
                }
            entry["rejected"] = store.rejected_count(s.name)
            sinks.append(entry)
        return {
            "site": config.site.name,
            "time": now.isoformat(timespec="seconds"),
            "store": {"path": str(config.storage.path), "bytes_used": store.size_bytes(),
                      "bytes_on_disk": store.file_bytes(), "readings": store.count_readings()},
            "devices": devices,
            "sinks": sinks,
            "alerts_undelivered": Outbox(store).counts(),
        }


def status_tables(payload: dict[str, Any]) -> list[Table]:
    devices = Table(title=f"devices at {payload['site']} ({payload['time']})")
    for col in ("device", "role", "last poll", "last reading", "age", "polls", "errors",
                "last error"):
        devices.add_column(col)
    for d in payload["devices"]:
        age = f"{d['last_reading_age_s']:.0f}s" if d["last_reading_age_s"] is not None else "-"
        devices.add_row(d["device"], d["role"], d["last_poll"] or "never",
                        d["last_reading"] or "never", age,
                        str(d["polls"]), str(d["errors"]), d["last_error"] or "")
    st = payload["store"]
    store = Table(title="store", show_header=False)
    store.add_row("path", st["path"])
    store.add_row("readings", f"{st['readings']:,}")
    store.add_row("size", f"{st['bytes_used'] / 1e6:.1f} MB used, "
                  f"{st['bytes_on_disk'] / 1e6:.1f} MB on disk")
    waiting = payload["alerts_undelivered"]
    store.add_row("alert events not yet delivered",
                  ", ".join(f"{ch}: {n}" for ch, n in sorted(waiting.items())) or "none")
    sinks = Table(title="sinks")
    for col in ("sink", "stream", "backlog", "oldest unsent", "rejected"):
        sinks.add_column(col)
    for s in payload["sinks"]:
        for stream in STREAMS:
            b = s[stream]
            age = f"{b['oldest_unsent_age_s']:.0f}s ago" if b["oldest_unsent_age_s"] else "-"
            sinks.add_row(s["sink"], stream, f"{b['backlog']:,}", age, str(s["rejected"]))
    return [devices, store, sinks]
