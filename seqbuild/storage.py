"""Atomic, validated Parquet I/O and per-shard completion markers, so that every stage can be resumed.

A file is written under a temporary name in the same folder, flushed, fsynced and renamed into place:
readers see the old file or the whole new one, never a truncated one. The schema is checked before
anything is written, and the file metadata records the table name, the schema version and the hash of
the config that produced it. A shard (one video's output of one stage) counts as done only once its
marker is written, after all of its files.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .errors import CorruptTableError, DiskFullError, SchemaMismatchError
from .schema import SCHEMA_VERSION

META_TABLE = b"seqbuild.table"
META_VERSION = b"seqbuild.schema_version"
META_CONFIG = b"seqbuild.config_hash"


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp creates 0600; outputs get the mode an ordinary open() would give (0666 less the umask).
    os.chmod(tmp_path, 0o666 & ~_umask())
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        if exc.errno == errno.ENOSPC:
            raise DiskFullError(f"{path}: no space left on device; earlier outputs are untouched") from exc
        raise
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    write_bytes_atomic(path, (json.dumps(obj, indent=1, sort_keys=True, default=str) + "\n").encode())


def check_schema(table: pa.Table, schema: pa.Schema, name: str) -> pa.Table:
    """Return ``table`` cast to ``schema`` (same columns, in order) or raise SchemaMismatchError."""
    missing = [f.name for f in schema if f.name not in table.column_names]
    extra = [c for c in table.column_names if c not in schema.names]
    if missing or extra:
        raise SchemaMismatchError(f"table {name!r}: missing columns {missing}, unexpected columns {extra}")
    table = table.select(schema.names)
    for field in schema:
        if not field.nullable and table.column(field.name).null_count:
            raise SchemaMismatchError(f"table {name!r}: column {field.name!r} has nulls")
    try:
        return table.cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, ValueError) as exc:
        raise SchemaMismatchError(f"table {name!r}: {exc}") from exc


def write_table(
    path: str | os.PathLike[str],
    table: pa.Table,
    schema: pa.Schema,
    name: str,
    config_hash: str = "",
    row_group_size: int = 4096,
) -> Path:
    """Check ``table`` against ``schema`` and write it to ``path`` atomically with seqbuild metadata."""
    table = check_schema(table, schema, name)
    meta = dict(schema.metadata or {})
    meta.update(
        {META_TABLE: name.encode(), META_VERSION: SCHEMA_VERSION.encode(), META_CONFIG: config_hash.encode()}
    )
    table = table.replace_schema_metadata(meta)
    path = Path(path)
    with atomic_path(path) as tmp:
        if table.num_rows:
            pq.write_table(table, tmp, row_group_size=row_group_size, compression="zstd")
        else:
            # An empty table is written with its schema and no row group at all: readers that size
            # their batches from row groups (Hugging Face datasets) cannot handle an empty row group.
            pq.ParquetWriter(tmp, table.schema, compression="zstd").close()
    return path


def table_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The seqbuild metadata (table, schema_version, config_hash) of a Parquet file."""
    try:
        meta = pq.read_schema(path).metadata or {}
    except (pa.ArrowInvalid, OSError) as exc:
        raise CorruptTableError(f"{path}: not a readable Parquet file ({exc})") from exc
    return {
        "table": meta.get(META_TABLE, b"").decode(),
        "schema_version": meta.get(META_VERSION, b"").decode(),
        "config_hash": meta.get(META_CONFIG, b"").decode(),
    }


def read_table(
    path: str | os.PathLike[str], schema: pa.Schema | None = None, columns: list[str] | None = None
) -> pa.Table:
    """Read a Parquet file written by :func:`write_table`; a damaged file raises CorruptTableError."""
    path = Path(path)
    try:
        table = pq.read_table(path, columns=columns)
    except FileNotFoundError:
        raise
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as exc:
        raise CorruptTableError(f"{path}: corrupt or truncated Parquet file ({exc})") from exc
    meta = table.schema.metadata or {}
    version = meta.get(META_VERSION, b"").decode()
    if version and version != SCHEMA_VERSION:
        raise SchemaMismatchError(f"{path}: schema version {version}, this seqbuild reads {SCHEMA_VERSION}")
    if schema is not None:
        want = schema if columns is None else pa.schema([schema.field(c) for c in columns])
        table = check_schema(table, want, str(path))
    return table


def read_tables(paths: Iterable[str | os.PathLike[str]], schema: pa.Schema) -> pa.Table:
    """Read and concatenate several files of one table (an empty table of ``schema`` when none)."""
    tables = [read_table(p, schema) for p in paths]
    if not tables:
        return schema.empty_table()
    return pa.concat_tables(tables)


class ShardStore:
    """A stage's output folder: one set of files per shard (a video) plus a completion marker each.

    Layout: ``ROOT/<table>/<shard>.parquet`` for each table and ``ROOT/_done/<shard>.json`` once all
    of a shard's tables are written. A shard without its marker is incomplete and is redone.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def table_path(self, table: str, shard: str) -> Path:
        """Path of ``table``'s file for ``shard``."""
        return self.root / table / f"{safe_name(shard)}.parquet"

    def marker_path(self, shard: str) -> Path:
        """Path of ``shard``'s completion marker."""
        return self.root / "_done" / f"{safe_name(shard)}.json"

    def is_done(self, shard: str, config_hash: str | None = None) -> bool:
        """True when ``shard`` is complete (and, if given, was made with the same config hash)."""
        marker = self.marker_path(shard)
        if not marker.exists():
            return False
        if config_hash is None:
            return True
        try:
            return json.loads(marker.read_text()).get("config_hash") == config_hash
        except (OSError, ValueError):
            return False

    def marker(self, shard: str) -> dict[str, Any]:
        """The contents of ``shard``'s completion marker ({} when absent)."""
        try:
            return json.loads(self.marker_path(shard).read_text())
        except (OSError, ValueError):
            return {}

    def mark_done(self, shard: str, config_hash: str, **info: Any) -> None:
        """Write ``shard``'s completion marker (call only after all its tables are written)."""
        write_json_atomic(self.marker_path(shard), {"shard": shard, "config_hash": config_hash, **info})

    def clear(self, shard: str) -> None:
        """Forget ``shard``: remove its marker, then its files (so a crash in between leaves it incomplete)."""
        self.marker_path(shard).unlink(missing_ok=True)
        for table_dir in self.root.iterdir() if self.root.exists() else []:
            if table_dir.is_dir() and not table_dir.name.startswith("_"):
                (table_dir / f"{safe_name(shard)}.parquet").unlink(missing_ok=True)

    def done_shards(self) -> list[str]:
        """Shards with a completion marker, sorted."""
        folder = self.root / "_done"
        if not folder.exists():
            return []
        return sorted(json.loads(p.read_text())["shard"] for p in folder.glob("*.json"))

    def paths(self, table: str, shards: Iterable[str] | None = None) -> list[Path]:
        """Files of ``table`` for the given shards (default: every completed shard)."""
        shards = self.done_shards() if shards is None else shards
        return [p for s in shards if (p := self.table_path(table, s)).exists()]

    def read(self, table: str, schema: pa.Schema, shards: Iterable[str] | None = None) -> pa.Table:
        """Concatenate ``table`` over completed shards."""
        return read_tables(self.paths(table, shards), schema)


def safe_name(name: str) -> str:
    """A file-name-safe version of an id (ids are hex or ``[A-Za-z0-9_.-]``; anything else is replaced)."""
    out = "".join(c if (c.isalnum() or c in "-_.") else "_" for c in name)
    if not out or out.startswith("."):
        out = "_" + out
    return out
