"""`energyd alerts`: the episodes in the store, active first, then resolved, newest first.

Read from the store beside a running daemon (WAL lets a reader in), so it answers whether the
daemon runs or not.
"""

from __future__ import annotations

from typing import Any

from rich.table import Table

from energyd.alerts.episodes import ACTIVE, load_episodes
from energyd.store.sqlite import Store


def collect_episodes(store: Store, *, limit: int | None = 200) -> list[dict[str, Any]]:
    episodes = load_episodes(store)
    active = [e for e in episodes if e.state == ACTIVE]
    resolved = [e for e in episodes if e.state != ACTIVE]
    if limit is not None:
        resolved = resolved[:max(0, limit - len(active))]
    return [e.to_json() for e in active + resolved]


# the band's edges are in the JSON; the table keeps to what a person on shift reads
_TABLE_SKIP = {"fire_at", "release_at", "window_s", "baseline_weeks", "interval_s"}


def _figures(figures: dict[str, Any] | None) -> str:
    if not figures:
        return ""
    return "\n".join(f"{k}={_fmt(v)}" for k, v in figures.items()
                      if v is not None and k not in _TABLE_SKIP)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e6 else f"{v:.0f}"
    return str(v)


def _when(iso: str | None) -> str:
    return iso[:16].replace("T", " ") if iso else "-"


def episodes_table(rows: list[dict[str, Any]], title: str = "alert episodes (UTC)") -> Table:
    table = Table(title=title)
    table.add_column("state", no_wrap=True)
    table.add_column("rule", overflow="fold")
    table.add_column("device", overflow="fold")
    table.add_column("start", max_width=10)
    table.add_column("end", max_width=10)
    table.add_column("figures that fired it", overflow="fold")
    for r in rows:
        table.add_row(r["state"], f"{r['rule']}\n({r.get('type') or '?'})", r["device"],
                      _when(r["started"]), _when(r["ended"]), _figures(r.get("figures")))
    return table
