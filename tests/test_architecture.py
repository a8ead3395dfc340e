"""Data flows one way: each layer imports only the layers below it (DESIGN.md, "Layout").

    model, clock, errors       the shared vocabulary
    config                     schema, profiles, production hours (and the plugins'
                               options models, which it assembles into the schema)
    store                      the durable store
    drivers                    devices -> readings
    sinks, accounting          read the store
    alerts                     read the store and the accounting's findings
    simulators                 stand in for devices (use the drivers' encoding)
    daemon                     wires everything together
    cli, demo                  the command line
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "energyd"
BASE = {"model", "clock", "errors"}
ALLOWED: dict[str, set[str]] = {
    "model": BASE,
    "clock": BASE,
    "errors": BASE,
    "config": BASE | {"config"},
    "store": BASE | {"store"},
    "drivers": BASE | {"config", "drivers"},
    "sinks": BASE | {"config", "store", "sinks"},
    "accounting": BASE | {"config", "store", "accounting"},
    "alerts": BASE | {"config", "store", "accounting", "alerts"},
    "simulators": BASE | {"config", "drivers", "simulators"},
}


def layer_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py") if len(rel.parts) > 1 else rel.stem


def imported_modules(path: Path) -> set[str]:
    """Every energyd module `path` imports (`from energyd.x import y` counts as energyd.x)."""
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        modules.update(n for n in names if n.startswith("energyd."))
    return modules


def imported_layers(path: Path) -> set[str]:
    return {name.split(".")[1] for name in imported_modules(path)}


# what config may take from the plugins: the registry and the options models, nothing else
PLUGIN_OPTIONS = re.compile(r"energyd\.drivers\.(registry|\w+\.options)")


SOURCES = sorted(p for p in PACKAGE.rglob("*.py") if layer_of(p) in ALLOWED)


def test_every_layer_is_checked() -> None:
    assert {layer_of(p) for p in SOURCES} == set(ALLOWED)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_only_layers_below(path: Path) -> None:
    layer = layer_of(path)
    wrong = imported_layers(path) - ALLOWED[layer] - {"__init__"}
    if layer == "config" and all(PLUGIN_OPTIONS.fullmatch(m) for m in imported_modules(path)
                                 if m.startswith("energyd.drivers.")):
        wrong.discard("drivers")
    assert not wrong, f"{path.relative_to(PACKAGE)} ({layer}) imports {sorted(wrong)}"


DRIVERS = PACKAGE / "drivers"
DRIVER_FOLDERS = sorted(p for p in DRIVERS.iterdir() if (p / "__init__.py").exists())


def test_every_driver_folder_is_a_plugin() -> None:
    """A folder per driver: its options, its code's PLUGIN, a README and a sample config,
    and its line in the registry."""
    from energyd.drivers.registry import DRIVERS as REGISTERED
    from energyd.drivers.registry import plugin

    assert {p.name for p in DRIVER_FOLDERS} == set(REGISTERED)
    for folder in DRIVER_FOLDERS:
        for name in ("options.py", "plugin.py", "README.md", "sample.yaml"):
            assert (folder / name).is_file(), f"drivers/{folder.name} has no {name}"
        assert plugin(folder.name).name == folder.name


@pytest.mark.parametrize("path", sorted(DRIVERS.glob("*/options.py")),
                         ids=lambda p: str(p.relative_to(PACKAGE)))
def test_driver_options_import_only_the_config_types(path: Path) -> None:
    # the schema imports them: anything more would load a driver's code with the config
    wrong = imported_modules(path) - {"energyd.config.types", "energyd.model"}
    assert not wrong, f"{path.relative_to(PACKAGE)} imports {sorted(wrong)}"


@pytest.mark.parametrize("path", sorted(DRIVERS.glob("*/*.py")),
                         ids=lambda p: str(p.relative_to(PACKAGE)))
def test_a_driver_imports_only_its_own_folder_and_its_contracts(path: Path) -> None:
    """What a driver is handed is drivers/contracts.py; another driver's code is not its
    business (a polled driver's bus owner is the daemon's, through that contract)."""
    own = f"energyd.drivers.{path.parent.name}"
    wrong = {m for m in imported_modules(path) if m.startswith("energyd.drivers")
             and m != "energyd.drivers.contracts" and not (m == own or m.startswith(own + "."))}
    assert not wrong, f"{path.relative_to(PACKAGE)} imports {sorted(wrong)}"


def test_the_registry_imports_only_options_models() -> None:
    """config imports the registry: a driver's code behind it is loaded only when asked for,
    so validating a file never loads pymodbus or paho."""
    allowed = {"energyd.config.types", "energyd.drivers.contracts"}
    wrong = {m for m in imported_modules(DRIVERS / "registry.py")
             if m not in allowed and not PLUGIN_OPTIONS.fullmatch(m)}
    assert not wrong, f"drivers/registry.py imports {sorted(wrong)}"


# The demo builds a simulated plant for each kind of device it knows: naming the drivers
# is its job.
DRIVER_NAMES_ALLOWED = ("drivers/", "demo.py", "demo/")


def test_no_code_outside_a_driver_folder_asks_which_driver_a_device_has() -> None:
    """The schema, the daemon and the command line go through the registry: a new driver
    needs no `if device.driver == ...` anywhere else."""
    asking = re.compile(r"""\.driver\s*(==|!=|\bin\b|\bnot in\b)\s*[("'\[{]""")
    found = [f"{p.relative_to(PACKAGE)}:{i}" for p in PACKAGE.rglob("*.py")
             if not str(p.relative_to(PACKAGE)).startswith(DRIVER_NAMES_ALLOWED)
             for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
             if asking.search(line)]
    assert not found, found
