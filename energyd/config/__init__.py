"""Configuration: the pydantic schema, YAML loading with line numbers, built-in profiles."""

from energyd.config.loader import load_config, parse_config
from energyd.config.schema import Config, Device

__all__ = ["Config", "Device", "load_config", "parse_config"]
