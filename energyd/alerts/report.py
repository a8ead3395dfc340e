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


def _figures(figures: dict[str, Any] | None) -> str:
    if not figures:
        return ""
    return ", ".join(f"{k}={_fmt(v)}" for k, v in figures.items() if v is not None)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e6 else f"{v:.0f}"
    return str(v)


def episodes_table(rows: list[dict[str, Any]], title: str = "alert episodes") -> Table:
    table = Table(title=title)
    for column in ("state", "rule", "type", "device", "start (UTC)", "end (UTC)",
                   "figures that fired it"):
        table.add_column(column, overflow="fold")
    for r in rows:
        table.add_row(r["state"], r["rule"], r.get("type") or "", r["device"],
                      r["started"][:19].replace("T", " "),
                      (r["ended"] or "")[:19].replace("T", " "), _figures(r.get("figures")))
    return table
