"""`energyd status`: read from the store what the running daemon has recorded there.

It opens the store beside the running daemon (WAL lets a reader in while it writes), so it
works whether or not the daemon is up, and shows how stale the data is. What the store
cannot hold (a full disk, a sink's error, any degraded state) it asks the running daemon's
/health for, when the config enables it; a daemon that does not answer is said to.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from rich.table import Table

from energyd.alerts.outbox import Outbox
from energyd.config.schema import Config
from energyd.errors import StoreError
from energyd.httpclient import HttpClient, HttpUnreachable, split_url
from energyd.model import from_ms
from energyd.sinks import backlog as sink_backlog
from energyd.sinks import describe as describe_sink
from energyd.store.sqlite import STREAMS, DatabaseError, Store, corrupt

HEALTH_TIMEOUT = 2.0  # seconds: a daemon busy for longer is reported as not answering


def _iso(ms: int | None) -> str | None:
    return from_ms(ms).isoformat(timespec="seconds") if ms is not None else None


def daemon_health(config: Config) -> dict[str, Any]:
    """The running daemon's /health, or {"status": "not answering", "error": ...}."""
    if not config.http.enabled:
        return {"status": "unknown", "error": "http is disabled in the config"}
    host = config.http.host
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None  # a name: only "localhost" is asked
    if host in ("", "localhost") or (address is not None and address.is_unspecified):
        host = "127.0.0.1"
    elif address is None or not address.is_loopback:
        # status talks to loopback only; a daemon listening elsewhere is not asked
        return {"status": "unknown",
                "error": f"http listens on {host}, not on loopback: not asked"}
    url = f"http://{'[' + host + ']' if ':' in host else host}:{config.http.port}/health"
    origin, target = split_url(url)
    client = HttpClient(origin, timeout=HEALTH_TIMEOUT)
    try:
        reply = client.get(target)
    except HttpUnreachable as exc:
        return {"status": "not answering", "error": f"{url}: {exc.reason}"}
    finally:
        client.close()
    try:  # a 503 while stopping: the body still says why
        payload: dict[str, Any] = json.loads(reply.data)
    except ValueError:
        return {"status": "not answering",
                "error": f"{url}: HTTP {reply.status}" if reply.status >= 300 else
                f"{url}: the reply is not JSON"}
    if not isinstance(payload, dict) or payload.get("site") != config.site.name:
        site = payload.get("site") if isinstance(payload, dict) else None
        return {"status": "unknown",
                "error": f"{url} answers for site {site!r}, not {config.site.name!r}"}
    return payload
def _named_by(entry: Any, device: str) -> bool:
    """Whether an MQTT template entry names `device` (its `devices:` list)."""
    o = getattr(entry, "mqtt", None)
    return bool(o is not None and o.devices and device in o.devices and device != entry.name)


def collect_status(config: Config, now: datetime | None = None) -> dict[str, Any]:
    """Raises StoreError (never a traceback of SQLite's) when the store cannot be read."""
    try:
        return _collect(config, now)
    except DatabaseError as exc:
        if not corrupt(exc):
            raise StoreError(f"{config.storage.path}: the store cannot be read: {exc}"
                             ) from None
        raise StoreError(f"{config.storage.path}: the store cannot be read: {exc}; check it "
                         f"with `energyd store check -c CONFIG` and, if it is damaged, "
                         f"`energyd store recover -c CONFIG --to NEW_FILE`") from None


def _collect(config: Config, now: datetime | None) -> dict[str, Any]:
    now = now or datetime.now(UTC)
    now_ms = int(now.timestamp() * 1000)
    health = daemon_health(config)
    with Store.open(config.storage.path, must_exist=True) as store:
        polls = store.device_status()
        conflicts = store.readings.conflict_counts()
        devices = []
        for d in config.devices:
            last = None
            for device, quantity in store.series():
                if device == d.name:
                    r = store.readings.latest(device, quantity)
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
                # a template entry's devices carry their own names: counted with it
                "conflicts": sum(n for device, n in conflicts.items()
                                 if device == d.name or _named_by(d, device)),
            })
        sinks = []
        for s in config.all_sinks:
            kind, where = describe_sink(s)
            entry: dict[str, Any] = {"sink": s.name, "api": kind, "url": where}
            for stream in STREAMS:
                b = sink_backlog(store, s.name, stream)
                entry[stream] = {
                    "backlog": b.count,
                    "oldest_unsent": _iso(b.oldest_ms),
                    "oldest_unsent_age_s":
                        round((now_ms - b.oldest_ms) / 1000, 1) if b.oldest_ms else None,
                }
            entry["rejected"] = store.cursors.rejected_count(s.name)
            live = health.get(f"sink:{s.name}")
            entry["last_error"] = live.get("last_error") if isinstance(live, dict) else None
            sinks.append(entry)
        disk = shutil.disk_usage(config.storage.path.parent)
        return {
            "site": config.site.name,
            "time": now.isoformat(timespec="seconds"),
            "daemon": {"status": health.get("status"), "error": health.get("error"),
                       "degraded": health.get("degraded") or {},
                       "pending_readings": health.get("pending_readings"),
                       "shed_readings": health.get("shed_readings")},
            "store": {"path": str(config.storage.path), "bytes_used": store.size_bytes(),
                      "bytes_on_disk": store.file_bytes(),
                      "readings": store.readings.count_readings(),
                      "held_for_review": store.readings.held_count(),
                      "disk_free_bytes": disk.free,
                      "conflicts": conflicts},
            "devices": devices,
            "sinks": sinks,
            "alerts_undelivered": Outbox(store).counts(),
        }


def recent_activity(store: Store, config: Config, *, hourly: int = 12, air: int = 4,
                    alerts: int = 8) -> dict[str, Any]:
    """What the plant did lately, from an open store (a running daemon's own): per device its
    latest active power and poll counts, the newest hourly rollups and compressed-air hours,
    the newest alert episodes, the readings held and the first sink's readings backlog.
    Times are epoch milliseconds, as a view that turns them into site time wants them."""
    polls = store.device_status()
    devices = []
    for d in config.devices:
        r = store.readings.latest(d.name, "active_power_kw")
        p = polls.get(d.name, {})
        devices.append({
            "device": d.name, "role": d.role, "driver": d.driver, "interval_s": d.interval,
            "kw": r.value if r is not None else None,
            "last_reading_ms": r.time_ms if r is not None else None,
            "polls": p.get("polls"), "errors": p.get("errors"),
            "last_error": p.get("last_error"), "last_error_ms": p.get("last_error_time"),
            "last_success_ms": p.get("last_success"),
        })
    stations = sorted({d.mqtt.station for d in config.devices if d.mqtt and d.mqtt.station})
    return {
        "devices": devices,
        "hourly": [asdict(r) for r in store.recent.rollups(hourly)],
        "air": [asdict(r) for r in store.recent.air_hours(stations, air)],
        "alerts": [asdict(e) for e in store.episodes.newest_first(limit=alerts)],
        "readings": store.readings.count_readings(),
        "backlog": sink_backlog(store, config.all_sinks[0].name).count if config.all_sinks
        else None,
    }


def status_tables(payload: dict[str, Any]) -> list[Table]:
    d = payload["daemon"]
    daemon = Table(title="daemon", show_header=False)
    daemon.add_row("status", str(d["status"]) + (f" ({d['error']})" if d.get("error") else ""))
    for name, state in d["degraded"].items():
        daemon.add_row(name, f"{state['reason']} (since {state['since']})")
    if d.get("pending_readings"):
        daemon.add_row("readings not yet committed", f"{d['pending_readings']:,}")
    if d.get("shed_readings"):
        daemon.add_row("gauge readings shed while commits failed", f"{d['shed_readings']:,}")
    devices = Table(title=f"devices at {payload['site']} ({payload['time']})")
    for col in ("device", "role", "last poll", "last reading", "age", "polls", "errors",
                "conflicts", "last error"):
        devices.add_column(col)
    for d in payload["devices"]:
        age = f"{d['last_reading_age_s']:.0f}s" if d["last_reading_age_s"] is not None else "-"
        devices.add_row(d["device"], d["role"], d["last_poll"] or "never",
                        d["last_reading"] or "never", age,
                        str(d["polls"]), str(d["errors"]), str(d["conflicts"]),
                        d["last_error"] or "")
    st = payload["store"]
    store = Table(title="store", show_header=False)
    store.add_row("path", st["path"])
    store.add_row("readings", f"{st['readings']:,}")
    if st["held_for_review"]:
        store.add_row("held for review", f"{st['held_for_review']:,} readings stamped under a "
                      "suspect clock (kept, not in the rollups)")
    store.add_row("conflicting readings kept",
                  ", ".join(f"{d}: {n}" for d, n in sorted(st["conflicts"].items())) or "none")
    store.add_row("size", f"{st['bytes_used'] / 1e6:.1f} MB used, "
                  f"{st['bytes_on_disk'] / 1e6:.1f} MB on disk")
    store.add_row("disk free", f"{st['disk_free_bytes'] / 1e6:.1f} MB")
    waiting = payload["alerts_undelivered"]
    store.add_row("alert events not yet delivered",
                  ", ".join(f"{ch}: {n}" for ch, n in sorted(waiting.items())) or "none")
    sinks = Table(title="sinks")
    for col in ("sink", "stream", "backlog", "oldest unsent", "rejected", "last error"):
        sinks.add_column(col)
    for s in payload["sinks"]:
        for i, stream in enumerate(STREAMS):
            b = s[stream]
            age = f"{b['oldest_unsent_age_s']:.0f}s ago" if b["oldest_unsent_age_s"] else "-"
            sinks.add_row(s["sink"], stream, f"{b['backlog']:,}", age, str(s["rejected"]),
                          (s["last_error"] or "") if i == 0 else "")
    return [daemon, devices, store, sinks]
