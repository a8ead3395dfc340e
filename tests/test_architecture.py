"""Data flows one way: each layer imports only the layers below it (DESIGN.md, "Layout").

    model, clock, errors       the shared vocabulary
    config                     schema, profiles, production hours
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
OPTIONS_MODULE = re.compile(r"^energyd\.(drivers|sinks)\.\w+\.options$")
ALLOWED: dict[str, set[str]] = {
    "model": BASE,
    "clock": BASE,
    "errors": BASE,
    # the config assembles the plugins' options models, and nothing else of theirs
    "config": BASE | {"config", "plugin options"},
    "store": BASE | {"store"},
    "drivers": BASE | {"config", "drivers", "plugin options"},
    "sinks": BASE | {"config", "store", "sinks"},
    "accounting": BASE | {"config", "store", "accounting"},
    "alerts": BASE | {"config", "store", "accounting", "alerts"},
    "simulators": BASE | {"config", "drivers", "simulators"},
}


def layer_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py") if len(rel.parts) > 1 else rel.stem


def imported_layers(path: Path) -> set[str]:
    layers = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "energyd" and len(parts) > 1:
                layers.add("plugin options" if OPTIONS_MODULE.match(name) else parts[1])
    return layers


def test_options_modules_import_only_the_config_types() -> None:
    for path in PACKAGE.glob("*/*/options.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and \
                    node.module.startswith("energyd"):
                assert node.module in ("energyd.config.types", "energyd.model"), \
                    f"{path.relative_to(PACKAGE)} imports {node.module}"


SOURCES = sorted(p for p in PACKAGE.rglob("*.py") if layer_of(p) in ALLOWED)


def test_every_layer_is_checked() -> None:
    assert {layer_of(p) for p in SOURCES} == set(ALLOWED)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_only_layers_below(path: Path) -> None:
    layer = layer_of(path)
    wrong = imported_layers(path) - ALLOWED[layer] - {"__init__"}
    assert not wrong, f"{path.relative_to(PACKAGE)} ({layer}) imports {sorted(wrong)}"
