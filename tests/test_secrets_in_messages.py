"""Secrets in URLs: no message echoes user:password@ or a query string, and a webhook URL
with credentials (from url_file) is delivered with them as HTTP basic auth."""

from __future__ import annotations

import base64
import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest
from servers import free_port
from test_alerts_dispatch import Receiver, event

from energyd.config import parse_config
from energyd.config.secrets import redact_url, redact_urls, split_credentials
from energyd.daemon.alerting import make_channel
from energyd.errors import ConfigError

PASSWORD = "hunter2-pw"
TOKEN = "tok-9f8e7d"


@pytest.mark.parametrize("url", [
    f"http://bob:{PASSWORD}@127.0.0.1:8086/x",
    f"htp://bob:{PASSWORD}@127.0.0.1:8086",  # a mistyped scheme
    f"https://hooks.example/services/T0?token={TOKEN}",
    f"https://hooks.example/services#{TOKEN}",
    f"http://bob:{PASSWORD}@[::1",  # does not parse
    f"http://bob:pa/{PASSWORD}@h/",  # a slash in the password, unquoted
    f"http://{PASSWORD}@h?{TOKEN}",
])
def test_redact_url_masks_credentials_and_query(url: str) -> None:
    shown = redact_url(url)
    assert PASSWORD not in shown and TOKEN not in shown, shown
    assert shown.split("//")[0] == url.split("//")[0]  # the scheme stays, to be corrected
    text = redact_urls(f"cannot reach {url} now")
    assert PASSWORD not in text and TOKEN not in text and text.startswith("cannot reach ")


def test_split_credentials_unquotes_and_keeps_the_rest() -> None:
    url, user, password = split_credentials("http://b%40b:p%3Aw@[::1]:8080/h?token=t")
    assert (url, user, password) == ("http://[::1]:8080/h?token=t", "b@b", "p:w")
    assert split_credentials("http://h/x") == ("http://h/x", None, None)


def test_check_config_never_echoes_a_password_from_a_mistyped_url(tmp_path: Path) -> None:
    cfg = tmp_path / "energyd.yaml"
    cfg.write_text(f"storage: {{path: {tmp_path / 'e.db'}}}\n"
                   f"influxdb:\n  url: htps://energyd:{PASSWORD}@127.0.0.1:8086\n  bucket: b\n")
    result = subprocess.run([sys.executable, "-m", "energyd.cli", "check-config", "-c", str(cfg)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"{cfg}:3: influxdb.url: " in result.stderr, result.stderr
    assert "not an http:// or https:// URL" in result.stderr
    assert PASSWORD not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("url", "message"), [
    (f"http://127.0.0.1:8086/?u=energyd&p={PASSWORD}", "takes no query string"),
    (f"http://energyd:{PASSWORD}@127.0.0.1:8086", "credentials do not belong in the URL"),
    (f"http://127.0.0.1:99999/#{PASSWORD}", "not a valid URL"),
])
def test_influxdb_url_with_secrets_is_refused_without_echoing_them(url: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(f"influxdb: {{url: '{url}', bucket: b}}\n", "c.yaml")
    text = str(info.value)
    assert text.startswith("c.yaml:1: influxdb.url: ") and message in text, text
    assert PASSWORD not in text


@pytest.mark.parametrize("url", [
    f"https://hooks.example/services/T0?token={TOKEN}",  # was accepted: `or` bound first
    f"https://ops:{TOKEN}@hooks.example/services/T0",
    f"https://hooks.example/services/T0#{TOKEN}",
])
def test_webhook_url_in_the_yaml_cannot_carry_a_secret(url: str) -> None:
    text = f"alerts:\n  channels:\n    - type: webhook\n      url: '{url}'\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text, "c.yaml")
    shown = str(info.value)
    assert shown.startswith("c.yaml:4: alerts.channels[0].url: "), shown
    assert "put it in a file (url_file)" in shown and TOKEN not in shown
    parse_config("alerts:\n  channels:\n    - {type: webhook, url: 'https://h.example/hook'}\n")


def test_webhook_url_file_is_checked_without_echoing_it(tmp_path: Path) -> None:
    (tmp_path / "hook-url").write_text(f"htps://ops:{PASSWORD}@127.0.0.1/h?token={TOKEN}\n")
    text = "alerts:\n  channels:\n    - type: webhook\n      url_file: hook-url\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text, "c.yaml", base_dir=tmp_path)
    shown = str(info.value)
    assert shown.startswith("c.yaml:4: alerts.channels[0].url_file: "), shown
    assert PASSWORD not in shown and TOKEN not in shown


def test_webhook_credentials_from_url_file_go_as_basic_auth(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with Receiver() as receiver:
        hook_url = receiver.url.replace("http://", f"http://ops%40plant:{PASSWORD}@")
        (tmp_path / "hook-url").write_text(hook_url + f"?token={TOKEN}\n")
        config = parse_config("alerts:\n  channels:\n    - type: webhook\n"
                              "      url_file: hook-url\n", "c.yaml", base_dir=tmp_path)
        hook = make_channel(config.alerts.channels[0], config)
        hook.start()
        try:
            hook.send(event().payload("plant-a"))
            assert receiver.got.wait(5), "the webhook was not delivered"
        finally:
            hook.close()
        headers, _, _ = receiver.requests[-1]
        scheme, _, blob = headers["Authorization"].partition(" ")
        assert scheme == "Basic"
        assert base64.b64decode(blob).decode() == f"ops@plant:{PASSWORD}"

    # a receiver that is gone: the attempts are logged, the URL's secrets are not
    port = free_port()
    (tmp_path / "gone-url").write_text(f"http://ops:{PASSWORD}@127.0.0.1:{port}/h?token={TOKEN}")
    config = parse_config("alerts:\n  channels:\n    - type: webhook\n"
                          "      url_file: gone-url\n      retries: 1\n      backoff: 0.05\n",
                          "c.yaml", base_dir=tmp_path)
    hook = make_channel(config.alerts.channels[0], config)
    with caplog.at_level(logging.INFO):
        hook.start()
        try:
            hook.send(event().payload("plant-a"))
            for _ in range(100):
                if hook.failed:
                    break
                time.sleep(0.05)
        finally:
            hook.close()
    assert hook.failed == 1
    assert "webhook webhook: giving up" in caplog.text
    assert PASSWORD not in caplog.text and TOKEN not in caplog.text
