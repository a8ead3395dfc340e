"""The `alerts:` section: the documented example parses, and bad rules are refused with the
file, the line and what is wrong."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from energyd.config.loader import load_config, parse_config
from energyd.daemon.alerting import make_channel
from energyd.errors import ConfigError

README = Path(__file__).parents[1] / "energyd" / "alerts" / "README.md"
DEVICES = """
site: {name: plant-a, timezone: Asia/Shanghai}
mqtt: {host: 127.0.0.1, port: 1883}
devices:
  - {name: incomer-1, role: grid_import, driver: modbus, profile: eastron_sdm630,
     modbus: {host: 127.0.0.1}}
"""


def test_the_documented_example_parses(tmp_path, monkeypatch):
    example = re.search(r"```yaml\n(.*?)```", README.read_text(), re.S)
    assert example is not None
    (tmp_path / "alert-webhook-key").write_text("k3y\n")
    monkeypatch.setenv("ENERGYD_ALERT_WEBHOOK", "http://127.0.0.1:8080/hooks/energy?t=tok")
    path = tmp_path / "energyd.yaml"
    path.write_text(DEVICES + example.group(1))
    config = load_config(path)
    rules = {r.name: r for r in config.alerts.rules}
    assert rules["incomer-spike"].window == 900 and rules["incomer-limit"].duration == 300
    assert rules["air-leak"].aggregate and rules["sink-backlog"].max_age == 3600
    hook = config.alerts.channels[2]
    assert hook.endpoint is not None and hook.secret is not None
    assert "tok" not in repr(hook) and "k3y" not in repr(hook)  # secrets stay out of reprs
    assert make_channel(hook, config).url.endswith("?t=tok")


@pytest.mark.parametrize(("rules", "line", "message"), [
    ("    - {name: a, type: off_shift, production_hours: ['Mon-Fry 06:00-22:00']}",
     9, "alerts.rules[0].production_hours: 'Mon-Fry 06:00-22:00': unknown day 'fry'"),
    ("    - {name: a, type: threshold}", 9, "alerts.rules[0]: a threshold rule needs a limit"),
    ("    - {name: a, type: spike}\n    - {name: a, type: stale}", 10,
     "alerts.rules[1].name: alert rule name 'a' is already used by entry 1"),
    ("    - {name: a/b, type: spike}", 9, "alerts.rules[0].name: String should match"),
    ("    - {name: a, type: spike, devices: [nowhere]}", 9,
     "alerts.rules[0].devices[0]: alerts rule 'a': unknown device 'nowhere'"),
    ("    - {name: a, type: spike, quantity: power_kw}", 9, "unknown quantity 'power_kw'"),
    # each type takes only its own keys
    ("    - {name: a, type: spike, limit: 5}", 9, "alerts.rules[0].limit: unknown key"),
    ("    - {name: a, type: threshold, limit: 5, factor: 2}", 9,
     "alerts.rules[0].factor: unknown key"),
    ("    - {name: a, type: stale, aggregate: true}", 9, "alerts.rules[0].aggregate: unknown key"),
    ("    - {name: a, type: sp1ke}", 9,
     "alerts.rules[0].type: Input should be 'spike', 'threshold', 'off_shift', 'stale', "
     "'reconciliation' or 'backlog'"),
    ("    - {name: a}", 9, "alerts.rules[0].type: Field required"),
    ("    - {name: a, type: backlog, devices: [incomer-1], role: submeter}", 9,
     "alerts.rules[0]: give devices or role, not both"),
])
def test_bad_rules_are_refused_with_their_line(rules, line, message):
    with pytest.raises(ConfigError) as err:
        parse_config(DEVICES + "alerts:\n  rules:\n" + rules + "\n", "plant.yaml")
    text = str(err.value)
    assert message in text, text
    assert text.startswith(f"plant.yaml:{line}:"), text


@pytest.mark.parametrize(("channel", "message"), [
    ("{type: webhook}", "a webhook channel needs one of url, url_file, url_env"),
    ("{type: webhook, url: 'ftp://127.0.0.1/x'}", "is not an http:// or https:// URL"),
    ("{type: webhook, url_env: NOT_SET_ANYWHERE}", "environment variable NOT_SET_ANYWHERE"),
    ("{type: log, broker: {host: 127.0.0.1}}", "only an mqtt channel takes a broker"),
    ("{type: mqtt, topic: 'alerts/#'}", "cannot hold the wildcards"),
])
def test_bad_channels_are_refused(channel, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config(DEVICES + f"alerts:\n  channels: [{channel}]\n", "plant.yaml")


def test_energyd_alerts_without_a_store_says_so(tmp_path):
    from click.testing import CliRunner

    from energyd.cli import cli

    path = tmp_path / "energyd.yaml"
    path.write_text(f"storage: {{path: {tmp_path / 'none' / 'energyd.db'}}}\n")
    result = CliRunner().invoke(cli, ["alerts", "-c", str(path)])
    assert result.exit_code == 1
    assert "no store here yet" in result.output
    assert not (tmp_path / "none" / "energyd.db").exists()  # nothing left behind
