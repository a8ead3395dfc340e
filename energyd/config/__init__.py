"""Configuration: the pydantic schema, YAML loading with line numbers, built-in profiles.

The names below are loaded on first use: a plugin's options module imports
energyd.config.types, and the schema imports the plugins' options modules, so loading the
schema with the package would make a plugin's first import a cycle.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from energyd.config.loader import load_config, parse_config
    from energyd.config.schema import Config, Device

__all__ = ["Config", "Device", "load_config", "parse_config"]

_WHERE = {"Config": "schema", "Device": "schema", "load_config": "loader",
          "parse_config": "loader"}


def __getattr__(name: str) -> Any:
    # Loaded when first asked for: the schema is assembled from the drivers' options
    # models, which are made of config.types; importing that must not build the schema.
    if name in _WHERE:
        return getattr(importlib.import_module(f"energyd.config.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'energyd.config' has no attribute {name!r}")
