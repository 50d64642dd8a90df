"""Load a pipeline: defaults < pipeline TOML < --set overrides < command-line flags, per section."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import build, config_hash, dump_toml, load_toml, parse_overrides, to_dict
from ..errors import ConfigError
from ..storage import write_bytes_atomic
from .config import SECTIONS, section_class


@dataclass
class Pipeline:
    """The merged config of every section of a run."""

    sections: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Any:
        return self.sections[name]

    def to_toml(self) -> str:
        """The merged config as TOML (what is saved beside the outputs)."""
        return dump_toml({name: to_dict(cfg) for name, cfg in self.sections.items()})

    def hash(self, section: str) -> str:
        """The config hash of one section."""
        return config_hash(self.sections[section])


def load_pipeline(
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    flags: dict[str, dict[str, Any]] | None = None,
) -> Pipeline:
    """Merge the layers of every section; an unknown section or key is a ConfigError that names it."""
    data = load_toml(path) if path else {}
    layers = [data, parse_overrides(list(overrides)), flags or {}]
    for layer in layers:
        for name, value in layer.items():
            if name not in SECTIONS:
                raise ConfigError(f"unknown config section [{name}] (known: {', '.join(SECTIONS)})")
            if not isinstance(value, dict):
                raise ConfigError(f"config section [{name}] must be a table")
    sections = {
        name: build(section_class(name), *(layer.get(name) for layer in layers), section=name)
        for name in SECTIONS
    }
    return Pipeline(sections)


def save_config(pipeline: Pipeline, path: str | Path) -> None:
    """Save the merged config beside the outputs (atomically)."""
    write_bytes_atomic(path, pipeline.to_toml().encode())
