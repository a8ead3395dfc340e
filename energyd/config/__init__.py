"""Configuration: the pydantic schema, YAML loading with line numbers, built-in profiles.

The names below are loaded on first use: a plugin's options module imports
energyd.config.types, and the schema imports the plugins' options modules, so loading the
schema with the package would make a plugin's first import a cycle.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from energyd.config.loader import load_config, parse_config
    from energyd.config.schema import Config, Device

__all__ = ["Config", "Device", "load_config", "parse_config"]


def __getattr__(name: str) -> Any:
    if name in ("load_config", "parse_config"):
        from energyd.config import loader
        return getattr(loader, name)
    if name in ("Config", "Device"):
        from energyd.config import schema
        return getattr(schema, name)
    raise AttributeError(f"module 'energyd.config' has no attribute {name!r}")
