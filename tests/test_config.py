"""Configuration: every shipped file validates; every kind of mistake is refused with its line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from energyd.config import load_config, parse_config
from energyd.config.units import parse_duration, parse_size
from energyd.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
ENERGYD = [sys.executable, "-m", "energyd.cli"]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ENERGYD, *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def write(tmp_path: Path, text: str, name: str = "energyd.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


GOOD = """\
site:
  name: plant-a
  timezone: Asia/Shanghai
storage:
  path: {db}
devices:
  - name: incomer-1
    role: grid_import
    driver: modbus
    interval: 10s
    registers:
      - {{quantity: active_energy_import_kwh, address: 72, function: 4, type: float32}}
    modbus: {{transport: tcp, host: 127.0.0.1, port: 5020, unit: 1}}
influxdb:
  api: v1
  url: http://127.0.0.1:8086
  database: energy
  username: energyd
  password_file: {secret}
"""


def _secret_names(path: Path) -> set[str]:
    return set(re.findall(r"_file:\s*([^\s#]+)", path.read_text()))


# emission-factors.yaml is data for the accounting, not a daemon configuration
SHIPPED = sorted(p for p in (ROOT / "config").glob("*.yaml") if p.name != "emission-factors.yaml")


def test_configs_are_shipped() -> None:
    assert any(p.name == "minimal.yaml" for p in SHIPPED)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_config_checks(path: Path, tmp_path: Path) -> None:
    # shipped examples name their secrets as systemd credentials; give them dummy values
    creds = tmp_path / "credentials"
    creds.mkdir()
    for name in _secret_names(path):
        if "/" not in name:
            (creds / name).write_text("dummy\n")
    result = run_cli("check-config", "-c", str(path), env={"CREDENTIALS_DIRECTORY": str(creds)})
    assert result.returncode == 0, result.stderr + result.stdout
    assert "OK" in result.stdout


def test_summary_lists_devices_roles_intervals_and_sinks(tmp_path: Path) -> None:
    secret = write(tmp_path, "hunter2-not-shown\n", "pw")
    cfg = write(tmp_path, GOOD.format(db=tmp_path / "e.db", secret=secret))
    result = run_cli("check-config", "-c", str(cfg))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for expected in ("incomer-1", "grid_import", "10s", "v1", "energy", "user+password"):
        assert expected in out, expected
    assert "hunter2" not in out + result.stderr


@pytest.mark.parametrize(
    ("mutation", "line", "path", "message"),
    [
        # a wrong type
        (("port: 5020", "port: fifty"), 13, "devices[0].modbus.port", "integer"),
        # an unknown key (a typo of `interval`)
        (("    interval: 10s", "    intreval: 10s"), 10, "devices[0].intreval", "unknown key"),
        # a missing secret file
        (("password_file: {secret}", "password_file: /nonexistent/pw"), 19,
         "influxdb.password_file",
         "secret file '/nonexistent/pw' does not exist"),
        # a YAML syntax error
        (("  timezone: Asia/Shanghai", "  timezone: [Asia/Shanghai"), 4, "", "YAML syntax error"),
    ],
    ids=["wrong-type", "unknown-key", "missing-secret", "yaml-syntax"],
)
def test_bad_config_exits_2_with_file_line_and_field(
    tmp_path: Path, mutation: tuple[str, str], line: int, path: str, message: str
) -> None:
    secret = write(tmp_path, "pw\n", "pw")
    old, new = mutation
    text = GOOD.replace(old, new).format(db=tmp_path / "e.db", secret=secret)
    assert text != GOOD.format(db=tmp_path / "e.db", secret=secret)
    cfg = write(tmp_path, text)
    result = run_cli("check-config", "-c", str(cfg))
    assert result.returncode == 2, result.stdout
    first = result.stderr.strip().splitlines()[0]
    assert first.startswith(f"{cfg}:"), first
    assert int(first.split(":")[1]) == line, first
    if path:
        assert f": {path}: " in first, first
    assert message in first, first


def test_every_error_reported_not_just_the_first(tmp_path: Path) -> None:
    text = GOOD.format(db=tmp_path / "e.db", secret=write(tmp_path, "x", "pw"))
    text = text.replace("port: 5020", "port: 99999").replace("interval: 10s", "interval: soon")
    with pytest.raises(ConfigError) as info:
        parse_config(text, "plant.yaml")
    paths = [p.path for p in info.value.problems]
    assert "devices[0].interval" in paths
    assert "devices[0].modbus.port" in paths
    assert [p.line for p in info.value.problems] == sorted(p.line for p in info.value.problems)


def test_secrets_from_file_env_and_credentials_never_shown(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "influx-token").write_text("tok-from-credential\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    monkeypatch.setenv("MQTT_PW", "pw-from-env")
    config = parse_config(
        "influxdb: {url: 'http://127.0.0.1:8086', bucket: b, org: o, token_file: influx-token}\n"
        "mqtt: {host: 127.0.0.1, username: u, password_env: MQTT_PW}\n", "c.yaml")
    assert config.influxdb[0].token.get_secret_value() == "tok-from-credential"
    assert config.mqtt is not None and config.mqtt.password.get_secret_value() == "pw-from-env"
    shown = repr(config) + str(config) + config.model_dump_json()
    assert "tok-from-credential" not in shown and "pw-from-env" not in shown

    monkeypatch.delenv("MQTT_PW")
    with pytest.raises(ConfigError) as info:
        parse_config("mqtt: {host: 127.0.0.1, password_env: MQTT_PW}\n", "c.yaml")
    assert "MQTT_PW is not set" in str(info.value)


def test_relative_secret_file_is_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "tok").write_text("abc\n")
    cfg = write(tmp_path, "influxdb: {url: 'http://127.0.0.1:1', bucket: b, "
                          "token_file: secrets/tok}\n")
    assert load_config(cfg).influxdb[0].token.get_secret_value() == "abc"


VALUE_DEVICE = "  - {{name: {name}, driver: mqtt, mqtt: {{topic: {topic}, format: value, " \
               "quantity: frequency_hz}}}}\n"


def test_cross_checks_name_the_problem() -> None:
    # the second definition's own line, not the file's first
    with pytest.raises(ConfigError, match=r"<config>:3: devices\[1\]\.name: device name 'a' "
                                          "is already used by entry 1"):
        parse_config("devices:\n" + VALUE_DEVICE.format(name="a", topic="x")
                     + VALUE_DEVICE.format(name="a", topic="y") + "mqtt: {host: 127.0.0.1}\n")
    with pytest.raises(ConfigError, match="mqtt devices need a top-level `mqtt:`"):
        parse_config("devices:\n" + VALUE_DEVICE.format(name="a", topic="x"))
    with pytest.raises(ConfigError, match="unknown quantity 'active_power_w'"):
        parse_config("devices:\n  - name: a\n    driver: modbus\n"
                     "    modbus: {host: 127.0.0.1}\n"
                     "    registers: [{quantity: active_power_w, address: 0}]\n")


@pytest.mark.parametrize(("text", "seconds"), [("10s", 10), ("5m", 300), ("1h", 3600),
                                               ("7d", 604800), ("250ms", 0.25), (15, 15)])
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


def test_bad_duration_and_sizes() -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("ten seconds")
    assert parse_size("2GiB") == 2 * 2**30
    assert parse_size("500MB") == 500_000_000
    with pytest.raises(ValueError, match="not a size"):
        parse_size("lots")


def test_readme_configuration_example_is_valid(tmp_path: Path) -> None:
    """The example a newcomer copies first must itself pass check-config."""
    text = (ROOT / "README.md").read_text()
    block = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    example = write(tmp_path, block, "readme.yaml")
    creds = tmp_path / "credentials"
    creds.mkdir()
    for name in _secret_names(example):
        (creds / name).write_text("dummy\n")
    result = run_cli("check-config", "-c", str(example), env={"CREDENTIALS_DIRECTORY": str(creds)})
    assert result.returncode == 0, result.stderr


def test_summary_names_every_device_of_a_topic_template(tmp_path: Path) -> None:
    cfg = write(tmp_path, (
        "mqtt: {host: 127.0.0.1}\n"
        "devices:\n"
        "  - name: air\n"
        "    role: compressor\n"
        "    driver: mqtt\n"
        "    mqtt:\n"
        "      topic: plant/air/+/telemetry\n"
        "      device_level: 2\n"
        "      devices: [c1, c2, c3]\n"
        "      fields: {active_power_kw: power_kw}\n"))
    result = run_cli("check-config", "-c", str(cfg))
    assert result.returncode == 0, result.stderr
    out = " ".join(result.stdout.split())
    assert "names 3 devices: c1, c2, c3" in out
