"""Load a config: defaults < the run's memory (RUN/config.toml) < pipeline TOML < --set < flags, per section.

A run folder remembers the config its stages ran with (:mod:`seqbuild.runstate`), so re-running or
resuming a run needs no inputs or settings repeated; whatever is given explicitly wins over the memory,
and a value that differs from it is logged.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import build, dump_toml, load_toml, parse_overrides, to_dict
from ..errors import ConfigError
from ..stages import section_class, sections
from ..storage import write_bytes_atomic

log = logging.getLogger("seqbuild")

RUN_CONFIG = "config.toml"


@dataclass
class Pipeline:
    """The merged config of every section of a run."""

    sections: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Any:
        return self.sections[name]

    def to_toml(self, names: list[str] | None = None) -> str:
        """The merged config (of the named sections, default all) as TOML."""
        names = list(self.sections) if names is None else names
        return dump_toml({name: to_dict(self.sections[name]) for name in names})


def _check_sections(layer: dict[str, Any], where: str) -> None:
    known = sections()
    for name, value in layer.items():
        if name not in known:
            raise ConfigError(f"{where}: unknown config section [{name}] (known: {', '.join(known)})")
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: config section [{name}] must be a table")


def run_memory(run: str | Path | None) -> dict[str, Any]:
    """The run's remembered config (RUN/config.toml), {} for a new run; sections no longer known are dropped."""
    if run is None:
        return {}
    path = Path(run) / RUN_CONFIG
    if not path.is_file():
        return {}
    data = load_toml(path)
    known = sections()
    memory = {k: v for k, v in data.items() if k in known and isinstance(v, dict)}
    for name, values in memory.items():
        once = {
            f.name for f in dataclasses.fields(section_class(name)) if not f.metadata.get("remember", True)
        }
        memory[name] = {k: v for k, v in values.items() if k not in once}
    return memory


def load_pipeline(
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    flags: dict[str, dict[str, Any]] | None = None,
    run: str | Path | None = None,
) -> Pipeline:
    """Merge the layers of every section; an unknown section or key is a ConfigError that names it."""
    memory = run_memory(run)
    data = load_toml(path) if path else {}
    _check_sections(data, str(path))
    sets = parse_overrides(list(overrides))
    _check_sections(sets, "--set")
    flags = flags or {}
    _check_sections(flags, "flags")
    memory = _without_stale_items(run, memory, [data, sets, flags])
    layers = [memory, data, sets, flags]
    merged = {
        name: build(section_class(name), *(layer.get(name) for layer in layers), section=name)
        for name in sections()
    }
    if memory:
        _log_changes(run, memory, merged)
    return Pipeline(merged)


def _without_stale_items(
    run: str | Path | None, memory: dict[str, Any], explicit: list[dict[str, Any]]
) -> dict[str, Any]:
    """The run's memory without the per-item values (``per_item_of``) whose list is given anew without them:
    thresholds remembered for other galleries must not be applied to the galleries given now."""
    out = dict(memory)
    for name, remembered in memory.items():
        given = {k: v for layer in explicit for k, v in layer.get(name, {}).items()}  # the last layer wins
        for f in dataclasses.fields(section_class(name)):
            items_of = f.metadata.get("per_item_of")
            if not items_of or f.name not in remembered or f.name in given or items_of not in given:
                continue
            cls = section_class(name)
            now = getattr(build(cls, {items_of: given[items_of]}, section=name), items_of)
            if now != getattr(build(cls, {items_of: remembered.get(items_of, [])}, section=name), items_of):
                log.info(
                    "%s: %s.%s %r not used: the run remembered it for other %s",
                    run,
                    name,
                    f.name,
                    remembered[f.name],
                    items_of,
                )
                out[name] = {k: v for k, v in out[name].items() if k != f.name}
    return out


def _log_changes(run: str | Path | None, memory: dict[str, Any], merged: dict[str, Any]) -> None:
    for name, remembered in memory.items():
        now = to_dict(merged[name])
        for key, old in remembered.items():
            if key in now and now[key] != old and not (old == "" and now[key] is None):
                log.info(
                    "%s: %s.%s changed from %r (remembered by the run) to %r", run, name, key, old, now[key]
                )


def save_config(pipeline: Pipeline, path: str | Path, names: list[str] | None = None) -> None:
    """Merge the named sections (default all) of ``pipeline`` into the TOML file ``path`` (atomically)."""
    path = Path(path)
    existing = load_toml(path) if path.is_file() else {}
    names = list(pipeline.sections) if names is None else names
    merged = {k: v for k, v in existing.items() if isinstance(v, dict)}
    for name in names:
        merged[name] = to_dict(pipeline[name])
    order = [n for n in sections() if n in merged] + [n for n in merged if n not in sections()]
    write_bytes_atomic(path, dump_toml({n: merged[n] for n in order}).encode())
