"""Run configuration: frozen pydantic sections (`schema`, `rl`), presets as data (`presets`),
and loading with overrides (`load`). The names below are the package's public API."""

from sftrl.config.base import ConfigError, Frozen, OptimConfig
from sftrl.config.load import build_config, explain, load_config, load_yaml, parse_override, to_yaml
from sftrl.config.schema import Config

__all__ = ["Config", "ConfigError", "Frozen", "OptimConfig", "build_config", "explain", "load_config",
           "load_yaml", "parse_override", "to_yaml"]
