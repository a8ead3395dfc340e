"""Headless Chromium (Debian's `chromium`) driven over the DevTools protocol, for the HTML report.

`open_page` starts a fresh browser (its own profile directory), loads one local file in a new
tab with the Network domain enabled, and returns what the page showed: the requests the page
made (the document itself included), values read with JavaScript, and a full-page screenshot.
The browser's own background traffic (update checks and the like) is switched off where a
flag can, and anything left is sent to a closed loopback port and an unresolvable host:
nothing leaves the machine. Only the tab's requests are reported; the browser's are not the
page's.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.sync.client import connect

FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-extensions", "--no-default-browser-check",
    "--disable-domain-reliability", "--disable-client-side-phishing-detection",
    "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
    "--host-resolver-rules=MAP * ~NOTFOUND", "--hide-scrollbars", "--remote-debugging-port=0",
]


def chromium_binary() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class Page:
    requests: list[str] = field(default_factory=list)  # every URL the tab asked for
    values: dict[str, Any] = field(default_factory=dict)
    screenshot: bytes = b""
    pdf: bytes = b""  # as the browser prints it (A4, the page's print styles)
    console: list[str] = field(default_factory=list)


def open_page(path: Path, profile: Path, scripts: dict[str, str], *, width: int = 1100,
              timeout: float = 60.0, pdf: bool = False) -> Page:
    """Load `path`; evaluate each of `scripts` (name -> JavaScript expression returning JSON
    data) once loaded; take a screenshot of the whole page."""
    binary = chromium_binary()
    assert binary, "chromium is not installed (make system-deps installs it)"
    profile.mkdir(parents=True)
    proc = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while not (port_file.exists() and len(port_file.read_text().split()) >= 2):
            assert proc.poll() is None, f"chromium exited with {proc.returncode}"
            assert time.monotonic() < deadline, "chromium did not open its DevTools port"
            time.sleep(0.05)
        port, ws_path = port_file.read_text().split()[:2]
        with connect(f"ws://127.0.0.1:{port}{ws_path}", max_size=None,
                     open_timeout=timeout) as ws:
            return _drive(ws, path, scripts, width, deadline, pdf)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _drive(ws: Any, path: Path, scripts: dict[str, str], width: int,
           deadline: float, pdf: bool) -> Page:
    ids = itertools.count(1)
    page = Page()
    session: str | None = None
    loaded = False

    def call(method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        nonlocal loaded
        n = next(ids)
        msg: dict[str, Any] = {"id": n, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        ws.send(json.dumps(msg))
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"chromium did not answer {method}"
            event = json.loads(ws.recv(timeout=left))
            if event.get("id") == n:
                assert "error" not in event, f"{method}: {event['error']}"
                return event.get("result", {})
            kind = event.get("method")
            if kind == "Network.requestWillBeSent":
                page.requests.append(event["params"]["request"]["url"])
            elif kind == "Page.loadEventFired":
                loaded = True
            elif kind == "Runtime.consoleAPICalled":
                page.console.append(str(event["params"].get("args")))

    target = call("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    call("Network.enable")
    call("Page.enable")
    call("Runtime.enable")
    call("Emulation.setDeviceMetricsOverride",
         {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": False})
    call("Page.navigate", {"url": path.resolve().as_uri()})
    while not loaded:
        call("Runtime.evaluate", {"expression": "1"})
        if not loaded:
            time.sleep(0.05)
    for name, expression in scripts.items():
        result = call("Runtime.evaluate", {"expression": f"JSON.stringify({expression})",
                                           "returnByValue": True})
        assert "exceptionDetails" not in result, f"{name}: {result['exceptionDetails']}"
        page.values[name] = json.loads(result["result"]["value"])
    # a moment for anything the page might still start (it should start nothing)
    with contextlib.suppress(AssertionError):
        end = time.monotonic() + 0.5
        while time.monotonic() < end:
            call("Runtime.evaluate", {"expression": "1"})
            time.sleep(0.1)
    size = call("Page.getLayoutMetrics")["cssContentSize"]
    shot = call("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}})
    page.screenshot = base64.b64decode(shot["data"])
    if pdf:
        page.pdf = base64.b64decode(call("Page.printToPDF", {"preferCSSPageSize": True})["data"])
    return page
