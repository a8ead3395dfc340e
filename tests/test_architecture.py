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
# The configuration assembles its unions from the plugins' registries: the one import of a
# higher layer it may make.
REGISTRIES = {"config": {"energyd.alerts.rules.registry"}}
# A plugin imports only its contracts.
RULE_CONTRACTS = {"energyd.model", "energyd.config.types", "energyd.config.hours",
                  "energyd.alerts.rules.base", "energyd.alerts.rules.conditions"}


def layer_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py") if len(rel.parts) > 1 else rel.stem


def imported_modules(path: Path) -> set[str]:
    """The energyd modules a file imports (`from package import module` names the module)."""
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
            for alias in node.names:
                sub = PACKAGE.parent.joinpath(*node.module.split("."), alias.name)
                if sub.with_suffix(".py").exists() or sub.is_dir():
                    names.append(f"{node.module}.{alias.name}")
            if len(names) > 1:
                names = names[1:]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        modules.update(n for n in names if n.startswith("energyd."))
    return modules


def imported_layers(path: Path) -> set[str]:
    skip = REGISTRIES.get(layer_of(path), set())
    return {name.split(".")[1] for name in imported_modules(path) - skip}


SOURCES = sorted(p for p in PACKAGE.rglob("*.py") if layer_of(p) in ALLOWED)


def test_every_layer_is_checked() -> None:
    assert {layer_of(p) for p in SOURCES} == set(ALLOWED)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_only_layers_below(path: Path) -> None:
    layer = layer_of(path)
    wrong = imported_layers(path) - ALLOWED[layer] - {"__init__"}
    assert not wrong, f"{path.relative_to(PACKAGE)} ({layer}) imports {sorted(wrong)}"


RULES = sorted(p for p in (PACKAGE / "alerts" / "rules").glob("*.py")
               if p.stem not in ("__init__", "base", "conditions", "registry"))


def test_every_rule_type_is_registered() -> None:
    from energyd.alerts.rules.registry import RULES as REGISTERED

    assert {p.stem for p in RULES} == set(REGISTERED)


@pytest.mark.parametrize("path", RULES, ids=lambda p: p.stem)
def test_a_rule_imports_only_its_contracts(path: Path) -> None:
    wrong = imported_modules(path) - RULE_CONTRACTS
    assert not wrong, f"{path.relative_to(PACKAGE)} imports {sorted(wrong)}"


SQL = re.compile(r"\b(SELECT\s.+\sFROM|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|"
                 r"CREATE\s+TABLE)\b", re.I | re.S)


def sql_strings(path: Path) -> list[int]:
    """Lines of the string literals (docstrings aside) that hold an SQL statement."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and n.body and isinstance(n.body[0], ast.Expr)
            and isinstance(n.body[0].value, ast.Constant)}
    return [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Constant)
            and isinstance(n.value, str) and id(n) not in docs and SQL.search(n.value)]


def test_the_sql_check_finds_sql() -> None:
    assert sql_strings(PACKAGE / "store" / "episodes.py")


@pytest.mark.parametrize("path", sorted([*(PACKAGE / "alerts").rglob("*.py"),
                                         *(PACKAGE / "demo").rglob("*.py")]),
                         ids=lambda p: str(p.relative_to(PACKAGE)))
def test_alerts_and_the_demo_hold_no_sql(path: Path) -> None:
    """The store's repositories are the only code that knows SQL."""
    assert not sql_strings(path), f"{path.relative_to(PACKAGE)}: SQL at {sql_strings(path)}"
