"""The systemd unit and the installer, checked with systemd's own tools and a scratch root.

`systemd-analyze security --offline=true` rates the unit file; `systemd-analyze verify` runs
against a scratch root that deploy/install.sh filled (it checks that ExecStart= exists, so it
needs an installed energyd) plus the host's own system units and /usr/bin/kill.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "deploy" / "systemd" / "energyd.service"
INSTALL = ROOT / "deploy" / "install.sh"
UV = ROOT / ".uv" / "bin" / "uv"
MAX_EXPOSURE = 2.0


def run(*args: str | os.PathLike[str], env: dict[str, str] | None = None,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} exited {proc.returncode}\n"
                             f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def exposure(unit: Path) -> float:
    proc = run("systemd-analyze", "security", "--offline=true", "--no-pager", unit)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout + proc.stderr)
    assert m, proc.stdout + proc.stderr
    return float(m.group(1))


def test_unit_security_rating_is_2_or_lower() -> None:
    rating = exposure(UNIT)
    print(f"\nsystemd-analyze security --offline=true {UNIT.name}: exposure {rating} "
          f"(ceiling {MAX_EXPOSURE})")
    assert rating <= MAX_EXPOSURE


def test_security_rating_sees_a_weakened_unit(tmp_path: Path) -> None:
    # the rating is read from systemd-analyze's own answer, not assumed: without the
    # sandbox the same service rates far worse
    text = UNIT.read_text()
    bare = "\n".join(line for line in text.splitlines()
                     if not line.startswith(("Protect", "Private", "Restrict", "SystemCall",
                                             "CapabilityBoundingSet", "IPAddress")))
    weak = tmp_path / "energyd.service"
    weak.write_text(bare + "\n")
    assert exposure(weak) > 5.0


def test_unit_essentials() -> None:
    text = UNIT.read_text()
    for line in ("Type=notify", "ExecStart=/opt/energyd/venv/bin/energyd run -c "
                 "/etc/energyd/energyd.yaml", "ExecReload=/bin/kill -HUP $MAINPID",
                 "StateDirectory=energyd", "ConfigurationDirectory=energyd",
                 "SupplementaryGroups=dialout", "DeviceAllow=char-ttyUSB rw",
                 "DeviceAllow=char-ttyS rw", "DeviceAllow=char-ttyAMA rw"):
        assert line in text.splitlines(), line
    assert re.search(r"^WatchdogSec=\d+", text, re.M)
    assert re.search(r"^LoadCredential=energyd\.influx-password$", text, re.M)
    # reaching meters and servers: TCP stays allowed
    assert re.search(r"^RestrictAddressFamilies=.*AF_INET\b.*AF_INET6", text, re.M)
    assert "PrivateNetwork=yes" not in text


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    run(UV, "build", "--wheel", "--quiet", "-o", out, ROOT)
    (found,) = out.glob("energyd-*.whl")
    return found


def install(root: Path, wheel: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    # offline: the wheel's dependencies come from uv's cache, filled by `make venv`
    return run(INSTALL, "--root", root, "--wheel", wheel, "--uv", UV, "--python",
               sys.executable, *extra, env={"UV_OFFLINE": "1"})


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes()
            for p in sorted(root.rglob("*"))
            if p.is_file() and "/venv/" not in str(p) and p.name != ".pwd.lock"}


def test_install_twice_verify_uninstall(tmp_path: Path, wheel: Path) -> None:
    root = tmp_path / "root"
    first = install(root, wheel)
    assert "from the plant example" in first.stdout
    energyd = root / "opt/energyd/venv/bin/energyd"
    assert run(energyd, "--version").stdout.strip().endswith("0.1.0")
    unit = root / "etc/systemd/system/energyd.service"
    assert unit.read_bytes() == UNIT.read_bytes()
    config = root / "etc/energyd/energyd.yaml"
    assert config.read_bytes() == (ROOT / "config/plant-example.yaml").read_bytes()
    passwd = (root / "etc/passwd").read_text()
    assert re.search(r"^energyd:x:\d+:\d+:.*:/var/lib/energyd:/usr/sbin/nologin$", passwd, re.M)
    assert oct((root / "etc/credstore").stat().st_mode & 0o777) == "0o700"

    # the installed energyd reads the installed config, secrets from a credential directory
    creds = tmp_path / "creds"
    creds.mkdir()
    for name in ("energyd.influx-password", "energyd.mqtt-password"):
        (creds / name).write_text("not-a-real-secret\n")
    ok = run(energyd, "check-config", "-c", config, env={"CREDENTIALS_DIRECTORY": str(creds)})
    assert "OK" in ok.stdout
    # the emission factors the config names are where the installer put them, and load
    factors = re.search(r"^\s*emission_factors:\s*(\S+)", config.read_text(), re.M)
    assert factors, "the example config names no emission-factor table"
    installed = root / factors.group(1).lstrip("/")
    assert installed.read_bytes() == (ROOT / "config/emission-factors.yaml").read_bytes()
    run(root / "opt/energyd/venv/bin/python", "-c",
        f"from energyd.accounting.factors import load_factors; load_factors({str(installed)!r})")

    # twice: the same tree, and a config edited by the plant's engineer stays as it is
    before = snapshot(root)
    config.write_text(config.read_text().replace("plant-a", "plant-b"))
    second = install(root, wheel)
    assert "kept the existing" in second.stdout
    after = snapshot(root)
    assert after.keys() == before.keys()
    changed = {k for k in after if after[k] != before[k]}
    assert changed == {"etc/energyd/energyd.yaml"}
    assert passwd == (root / "etc/passwd").read_text()  # no second user

    # systemd-analyze verify on the installed unit: the scratch root stands in for the
    # gateway, with the host's system units and kill(1) that ExecReload= runs
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system",
                    symlinks=True, dirs_exist_ok=True)
    (root / "usr/bin").mkdir(parents=True, exist_ok=True)
    shutil.copy2("/usr/bin/kill", root / "usr/bin/kill")
    (root / "bin").symlink_to("usr/bin")
    verify = run("systemd-analyze", "verify", f"--root={root}",
                 "/etc/systemd/system/energyd.service", check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert verify.stdout + verify.stderr == ""

    # uninstall keeps the config, the data and the credentials
    state = root / "var/lib/energyd"
    state.mkdir(parents=True)
    (state / "energyd.db").write_bytes(b"readings")
    (root / "etc/credstore/energyd.influx-password").write_text("secret\n")
    run(INSTALL, "--root", root, "--uninstall")
    assert not (root / "opt/energyd").exists()
    assert not unit.exists()
    assert (state / "energyd.db").read_bytes() == b"readings"
    assert "plant-b" in config.read_text()
    assert (root / "etc/credstore/energyd.influx-password").exists()

    # --purge takes them too
    run(INSTALL, "--root", root, "--uninstall", "--purge")
    assert not state.exists() and not config.exists()
    assert not (root / "etc/credstore/energyd.influx-password").exists()


def test_install_refuses_what_is_not_a_wheel(tmp_path: Path) -> None:
    bogus = tmp_path / "energyd.tar.gz"
    bogus.write_text("x")
    proc = run(INSTALL, "--root", tmp_path / "root", "--wheel", bogus, check=False)
    assert proc.returncode != 0
    assert "is not a wheel" in proc.stderr
    assert not (tmp_path / "root/opt").exists()
