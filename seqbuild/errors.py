"""Errors that seqbuild reports to users as one clear line (the CLI prints them without a traceback)."""

from __future__ import annotations


class SeqbuildError(Exception):
    """Base of the errors the CLI turns into a one-line message and a non-zero exit."""

    exit_code = 1


class ConfigError(SeqbuildError):
    """A config file, a --set override or a flag is invalid (names the key)."""

    exit_code = 2


class InputError(SeqbuildError):
    """An input (file, URL, run directory) is missing or unusable (names the input)."""


class MissingWeightsError(InputError):
    """A model that has no default weights (a SeqFace checkpoint, an ONNX file) was given none."""


class SchemaMismatchError(SeqbuildError):
    """A table does not match its data contract."""


class CorruptTableError(SeqbuildError):
    """A Parquet file of a run directory is damaged or truncated (never read as empty)."""


class DiskFullError(SeqbuildError):
    """A write ran out of space; the files written before are intact."""


class MissingDependencyError(SeqbuildError):
    """An optional dependency is needed for the requested feature."""


def requires(module: str, extra: str) -> object:
    """Import ``module`` or raise MissingDependencyError naming the pip extra that provides it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"this feature needs the Python module {module!r}: pip install 'seqbuild[{extra}]' ({exc})"
        ) from exc
