"""Sinks as plugins: a folder each (options, code, README, sample), one registry line, the
`sinks:` list beside today's `influxdb:` section; the `file` sink end to end."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import altered

from energyd.config.loader import parse_config
from energyd.errors import ConfigError, SinkUnreachable
from energyd.model import Reading, from_ms
from energyd.sinks import encoder_for, for_sink, forward_once
from energyd.sinks.forwarder import backlog as sink_backlog
from energyd.sinks.lineprotocol import body
from energyd.sinks.registry import PLUGINS, SINKS
from energyd.store.sqlite import READINGS, Store
from energyd.store.streams import Streams

PACKAGE = Path(__file__).resolve().parent.parent / "energyd"
SINKS_DIR = PACKAGE / "sinks"
T0 = 1_700_000_000_000


@pytest.fixture
def store(tmp_path: Path):
    with Store.open(tmp_path / "store.db") as s:
        yield s


def polls(count: int, start: int = T0) -> list[Reading]:
    return [Reading(from_ms(start + k * 1000), device, q, k + i / 4)
            for k in range(count) for device in ("inc1", "sub1")
            for i, q in enumerate(("active_power_kw", "active_energy_import_kwh"))]


def config_text(sinks: str, storage: Path) -> str:
    return (f"storage:\n  path: {storage}\n"
            "devices:\n"
            "  - {name: inc1, role: grid_import, driver: modbus, profile: acrel_adl400,\n"
            "     modbus: {host: 127.0.0.1}}\n"
            "  - {name: sub1, driver: modbus, profile: acrel_adl400,\n"
            "     modbus: {host: 127.0.0.1}}\n" + sinks)


@pytest.mark.parametrize("name", sorted(SINKS))
def test_each_sink_sample_parses_and_its_readme_documents_every_option(name, tmp_path,
                                                                        monkeypatch):
    monkeypatch.setenv("ENERGYD_SAMPLE_INFLUX_PASSWORD", "pw")
    monkeypatch.setenv("ENERGYD_SAMPLE_INFLUX_TOKEN", "tok")
    folder = SINKS_DIR / name
    sample = (folder / "sample.yaml").read_text()
    config = parse_config(sample, str(folder / "sample.yaml"), base_dir=tmp_path)
    [sink] = config.all_sinks
    assert sink.type == name and isinstance(sink, SINKS[name].options)
    # every key the sample sets is one the options model has, with the value it says
    for key in re.findall(r"^\s+-? ?(\w+):", sample, flags=re.M):
        assert key in type(sink).model_fields, (name, key)
    documented = set(re.findall(r"^\| `(\w+)` \|", (folder / "README.md").read_text(),
                                flags=re.M))
    assert documented == set(type(sink).model_fields), name


def test_the_influxdb_section_is_one_sink_per_entry_beside_the_sinks_list(tmp_path):
    text = config_text(
        "influxdb:\n"
        "  - {name: old1, api: v1, url: 'http://127.0.0.1:8086', database: energy}\n"
        "  - {name: old2, url: 'http://127.0.0.1:8086', bucket: energy}\n"
        "sinks:\n"
        f"  - {{type: file, path: {tmp_path / 'out.lp'}}}\n", tmp_path / "s.db")
    config = parse_config(text, "energyd.yaml")
    assert [(s.name, s.type) for s in config.all_sinks] == [
        ("old1", "influxdb_v1"), ("old2", "influxdb_v2"), ("file", "file")]
    assert [s.api for s in config.all_sinks[:2]] == ["v1", "v2"]


def test_a_sink_name_is_unique_across_both_sections_and_a_bad_type_is_named(tmp_path):
    text = config_text(
        "influxdb:\n"
        "  url: 'http://127.0.0.1:8086'\n"
        "  bucket: energy\n"
        "sinks:\n"
        "  - type: influxdb_v1\n"
        "    url: 'http://127.0.0.1:8086'\n"
        "    database: energy\n", tmp_path / "s.db")
    with pytest.raises(ConfigError, match=r"energyd.yaml:12: sinks\[0\]\.name: sink name "
                       "'influxdb' is already used by an `influxdb:` entry"):
        parse_config(text, "energyd.yaml")
    bad = text.replace("type: influxdb_v1", "type: influxdb_v3")
    with pytest.raises(ConfigError, match=r"energyd.yaml:12: sinks\[0\]\.type: unknown sink "
                       "type 'influxdb_v3': energyd has influxdb_v1, influxdb_v2, file"):
        parse_config(bad, "energyd.yaml")


def test_the_file_sink_writes_what_influxdb_would_get_and_resumes(tmp_path, store):
    out = tmp_path / "outbox" / "energy.lp"
    config = parse_config(config_text(f"sinks:\n  - {{type: file, path: {out}}}\n",
                                      tmp_path / "s.db"), "energyd.yaml")
    [sink] = config.all_sinks
    store.insert_readings(polls(30))
    forwarder = for_sink(sink, config, store)
    try:
        # the folder is missing: retryable, and nothing is lost or acknowledged
        with pytest.raises(SinkUnreachable, match="No such file or directory"):
            forwarder.step()
        assert store.cursors.position("file", READINGS) == 0
        assert sink_backlog(store, "file").count == 120
        out.parent.mkdir()
        assert forwarder.drain(timeout=10) == 120
        rows, _, _ = store.readings.reading_chunk(0, 2**62, 1000)
        names = Streams(store).readings.series_names()
        expected = body(encoder_for(config).readings(rows, names)).decode().splitlines()
        assert out.read_text().splitlines() == expected and len(expected) == 60
        store.insert_readings(polls(5, start=T0 + 60_000))
        assert forwarder.drain(timeout=10) == 20
        lines = out.read_text().splitlines()
        assert len(lines) == 70 and lines[:60] == expected  # appended, nothing sent twice
    finally:
        forwarder.close()
    assert sink_backlog(store, "file").count == 0


def test_energyd_forward_drives_a_file_sink(tmp_path):
    out = tmp_path / "energy.lp"
    config = parse_config(config_text(f"sinks:\n  - {{type: file, name: carry, path: {out}}}\n",
                                      tmp_path / "s.db"), "energyd.yaml")
    with Store.open(config.storage.path) as store:
        store.insert_readings(polls(3))
    [entry] = forward_once(config)
    assert entry == {"sink": "carry", "api": "file", "url": str(out), "forwarded": 12,
                     "error": None, "backlog": 0, "rejected": 0}
    assert len(out.read_text().splitlines()) == 6


def test_adding_the_file_sink_touched_only_its_folder_and_one_registry_line():
    """The `file` sink is known outside its folder by one line of sinks/registry.py: the
    config, the daemon, the status and the command line find it through the registry."""
    folder = SINKS_DIR / "file"
    mentions = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if folder in path.parents:
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if re.search(r"sinks\.file\b|sinks/file\b|FileSink|FileTransport", line):
                mentions.append((str(path.relative_to(PACKAGE)), n, line.strip()))
    assert [(p, line) for p, _, line in mentions] == [
        ("sinks/registry.py", '"file": "energyd.sinks.file",')]
    assert PLUGINS["file"] == "energyd.sinks.file"
    assert sorted(p.name for p in folder.iterdir() if p.name != "__pycache__") == [
        "README.md", "__init__.py", "options.py", "sample.yaml", "transport.py"]


def test_streams_read_after_a_position_and_the_backlog_follows_the_sinks_own_cursors(store):
    """The store's streams take and give positions; the cursors and what they mean (a gap
    while the live tail goes first) are the forwarder's."""
    from energyd.sinks.forwarder import GAP, LIVE, backlog
    from energyd.store.streams import AlertRow

    store.insert_readings(polls(10))  # 40 readings
    streams = Streams(store)
    first = streams.readings.after(0, 8)
    assert len(first.rows) == 8 and first.more and first.next > 0
    rest = streams.readings.after(first.next, 1000)
    assert len(rest.rows) == 32 and not rest.more
    assert streams.readings.after(rest.next, 10) == ([], rest.next, False)

    assert backlog(store, "s").count == 40 == store.cursors.backlog("s", split=(GAP, LIVE)).count
    middle = streams.readings.position_back(16, 0)
    store.cursors.commit("s", {READINGS: first.next, GAP: middle, LIVE: rest.next - 4})
    gap = backlog(store, "s")
    # the store's own count agrees while it still has one
    assert gap == store.cursors.backlog("s", split=(GAP, LIVE))
    assert gap.count == streams.readings.count_after(first.next) - \
        streams.readings.count_after(middle) + 4
    assert gap.oldest_ms == T0 + 2000  # 8 readings = two polls sent

    store.cursors.commit("s", {READINGS: rest.next, GAP: None, LIVE: None})
    assert backlog(store, "s").count == 0

    altered(store, "INSERT INTO alerts (rule, device, state, started, detail, seq) "
                   "VALUES ('spike', 'inc1', 'active', ?, '{}', ?)",
            [(T0 + k,) for k in range(3)], numbered=True)
    chunk = streams.alerts.after(0, 2)
    assert [type(r) for r in chunk.rows] == [AlertRow, AlertRow] and chunk.more
    assert chunk.rows[0].rule == "spike" and chunk.next == chunk.rows[1].seq
    assert streams.alerts.after(chunk.next, 2).rows[0].started == T0 + 2
    assert backlog(store, "s", "alerts").count == 3
    store.cursors.commit("s", {"alerts": chunk.next})
    assert backlog(store, "s", "alerts") == store.cursors.backlog("s", "alerts")
    assert backlog(store, "s", "alerts").count == 1


def test_the_readme_sinks_example_is_valid(tmp_path, monkeypatch):
    text = (PACKAGE.parent / "README.md").read_text()
    [block] = [b.split("```", 1)[0] for b in text.split("```yaml\n")[1:]
               if b.startswith("sinks:")]
    (tmp_path / "energyd.influx-token").write_text("dummy\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    config = parse_config(config_text(block, tmp_path / "s.db"), "README.md")
    assert [(s.type, s.name) for s in config.all_sinks] == [("influxdb_v2", "cloud"),
                                                              ("file", "outbox")]


def test_check_config_and_status_show_every_sink(tmp_path):
    import json

    from click.testing import CliRunner

    from energyd.cli import cli as main

    cfg = tmp_path / "energyd.yaml"
    cfg.write_text(config_text(
        "http: {port: 1}\n"
        "influxdb: {name: central, api: v1, url: 'http://127.0.0.1:8086', database: energy}\n"
        "sinks:\n"
        "  - {type: file, name: outbox, path: outbox.lp}\n"
        "  - {type: influxdb_v2, name: vm, url: 'http://127.0.0.1:8428', bucket: energy}\n",
        tmp_path / "s.db"))
    checked = CliRunner().invoke(main, ["check-config", "-c", str(cfg)])
    assert checked.exit_code == 0, checked.output
    assert "sinks (3)" in checked.output
    for name, kind in (("central", "v1"), ("outbox", "file"), ("vm", "v2")):
        assert re.search(rf"{name}\s+│\s+{kind}\s+│", checked.output), (name, checked.output)
    with Store.open(tmp_path / "s.db") as store:
        store.insert_readings(polls(2))
    status = CliRunner().invoke(main, ["status", "-c", str(cfg), "--json"])
    assert status.exit_code in (0, 1), status.output
    sinks = {s["sink"]: s for s in json.loads(status.output)["sinks"]}
    assert {k: (s["api"], s["readings"]["backlog"]) for k, s in sinks.items()} == {
        "central": ("v1", 8), "outbox": ("file", 8), "vm": ("v2", 8)}
    assert sinks["outbox"]["url"] == str(tmp_path / "outbox.lp")
