"""deploy/influxdb: the 1.x setup script against a real InfluxDB; the 2.x one parses."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "deploy" / "influxdb"


def run(script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", str(SCRIPTS / script)], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=60)


def test_setup_1x_creates_database_policy_and_users_and_can_run_again(influxdb, tmp_path):
    db = f"energy_{uuid.uuid4().hex[:8]}"
    secret = "it's-a-s3cret"
    (tmp_path / "energyd").write_text(secret + "\n")
    (tmp_path / "grafana").write_text("gr4fana\n")
    env = {"INFLUX_URL": influxdb.url, "DATABASE": db, "RETENTION": "400d",
           "ENERGYD_PASSWORD_FILE": str(tmp_path / "energyd"),
           "GRAFANA_PASSWORD_FILE": str(tmp_path / "grafana")}
    try:
        first = run("setup-1x.sh", env)
        assert first.returncode == 0, first.stderr
        again = run("setup-1x.sh", {**env, "RETENTION": "30d"})
        assert again.returncode == 0, again.stderr
        assert secret not in first.stdout + first.stderr + again.stdout + again.stderr

        [policies] = influxdb.query(f'SHOW RETENTION POLICIES ON "{db}"')["results"][0]["series"]
        rows = {r[0]: r for r in policies["values"]}
        assert rows["energyd"][1] == "720h0m0s" and rows["energyd"][4] is True
        grants = {u: influxdb.query(f'SHOW GRANTS FOR "{u}"')["results"][0]["series"][0]
                  ["values"] for u in ("energyd", "grafana")}
        assert [db, "WRITE"] in grants["energyd"] and [db, "READ"] in grants["grafana"]

        bad = run("setup-1x.sh", {**env, "DATABASE": "no; DROP"})
        assert bad.returncode == 1 and "letters, digits and _" in bad.stderr
    finally:
        influxdb.query(f'DROP DATABASE "{db}"')
        for user in ("energyd", "grafana"):
            influxdb.query(f'DROP USER "{user}"', check=False)


def test_setup_2x_is_valid_shell_and_refuses_to_run_without_its_settings(tmp_path):
    assert subprocess.run(["sh", "-n", str(SCRIPTS / "setup-2x.sh")]).returncode == 0
    result = run("setup-2x.sh", {"INFLUX_ORG": "", "PATH": os.environ["PATH"]})
    assert result.returncode != 0 and "INFLUX_ORG" in result.stderr
