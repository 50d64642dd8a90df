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
import fcntl
import hashlib
import json
import logging
import os
import stat
import tempfile
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .errors import CorruptTableError, DiskFullError, InputError, SchemaMismatchError
from .schema import SCHEMA_VERSION

log = logging.getLogger("seqbuild.storage")

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


def is_disk_full(exc: BaseException) -> bool:
    """True for the error a write gets when the file system is full (or the user's quota is spent)."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def disk_full_error(path: str | os.PathLike[str], exc: BaseException) -> DiskFullError:
    """The one-line DiskFullError for a write to ``path`` that ran out of space."""
    return DiskFullError(f"{path}: no space left on device; earlier outputs are untouched")


def ensure_folder(path: str | os.PathLike[str], what: str = "output folder") -> Path:
    """Create folder ``path`` (and its parents); InputError naming it when it cannot be made or written."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise InputError(f"{what} {path}: exists and is not a folder") from None
    except NotADirectoryError:
        raise InputError(f"{what} {path}: a file is in the way (a parent of it is not a folder)") from None
    except OSError as exc:
        raise InputError(f"{what} {path}: cannot be created ({exc.strerror or exc})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise InputError(f"{what} {path}: not writable (permission denied)")
    return path


def _mkstemp_locked(path: Path) -> tuple[int, Path]:
    """A new temporary file beside ``path`` with the ordinary file mode, held under an exclusive lock.

    The lock says the file is live: :func:`remove_stale_temporaries` deletes only temporaries whose
    writer has died (the kernel drops a lock with its holder), never one another process is writing.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # mkstemp creates 0600; outputs get the mode an ordinary open() would give (0666 less the umask).
        os.fchmod(fd, 0o666 & ~_umask())
    except BaseException:
        os.close(fd)
        Path(tmp).unlink(missing_ok=True)
        raise
    return fd, Path(tmp)


def remove_stale_temporaries(folder: str | os.PathLike[str], pattern: str = ".*.tmp") -> int:
    """Delete the temporary files in ``folder`` (recursively) left by writers that died; returns how many.

    A live writer holds a lock on its temporary file, so two commands sharing a folder never delete
    each other's work in progress.
    """
    removed = 0
    for tmp in Path(folder).rglob(pattern):
        try:
            fd = os.open(tmp, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # its writer is alive
            tmp.unlink(missing_ok=True)
            removed += 1
        finally:
            os.close(fd)
    return removed


def read_regular_file(path: str | os.PathLike[str]) -> bytes:
    """The bytes of a regular file; InputError naming ``path`` for anything else (a FIFO, a device, a
    folder), which is refused before it is read, so a named pipe can never block a command."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise InputError(f"{path}: cannot open ({exc.strerror or exc})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InputError(f"{path}: not a regular file")
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=False) as fh:
            return fh.read()
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    A full disk raises DiskFullError (one line naming ``path``); the previous file, if any, is untouched.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_path = _mkstemp_locked(path)
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full_error(path, exc) from exc
        raise
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        if is_disk_full(exc):
            raise disk_full_error(path, exc) from exc
        raise
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)


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


class AppendingTableWriter:
    """A Parquet file written in batches under a locked temporary name and renamed into place on commit.

    For tables too large to hold in memory at once (a long video's detections with their crops). It
    has the guarantees of :func:`write_table`: the schema is checked, the seqbuild metadata recorded,
    readers never see a partial file, and a full disk raises DiskFullError leaving earlier files intact.
    """

    def __init__(
        self, path: str | os.PathLike[str], schema: pa.Schema, name: str, config_hash: str = ""
    ) -> None:
        self.path = Path(path)
        self.schema = schema
        self.name = name
        self.rows = 0
        meta = dict(schema.metadata or {})
        meta.update(
            {
                META_TABLE: name.encode(),
                META_VERSION: SCHEMA_VERSION.encode(),
                META_CONFIG: config_hash.encode(),
            }
        )
        self._schema = schema.with_metadata(meta)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd, self.tmp = _mkstemp_locked(self.path)
        except OSError as exc:
            raise self._error(exc) from exc
        self._open = True
        try:
            self._writer = pq.ParquetWriter(self.tmp, self._schema, compression="zstd")
        except BaseException as exc:
            self._discard()
            if isinstance(exc, OSError):
                raise self._error(exc) from exc
            raise

    def _error(self, exc: BaseException) -> BaseException:
        return disk_full_error(self.path, exc) if is_disk_full(exc) else exc

    def _release(self) -> None:
        if self._open:
            self._open = False
            with contextlib.suppress(OSError):
                os.close(self._fd)

    def _discard(self) -> None:
        self.tmp.unlink(missing_ok=True)
        self._release()

    def write(self, rows: list[dict[str, Any]] | pa.Table) -> None:
        """Append rows (dicts, or a table of the schema)."""
        table = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(rows, schema=self.schema)
        if table.num_rows == 0:
            return
        table = check_schema(table, self.schema, self.name)
        try:
            self._writer.write_table(table.replace_schema_metadata(self._schema.metadata))
        except OSError as exc:
            self.abort()
            raise self._error(exc) from exc
        self.rows += table.num_rows

    def commit(self) -> Path:
        """Close the file and rename it into place."""
        try:
            self._writer.close()
            with open(self.tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(self.tmp, self.path)
            _fsync_dir(self.path.parent)
        except BaseException as exc:
            self._discard()
            if isinstance(exc, OSError):
                raise self._error(exc) from exc
            raise
        self._release()
        return self.path

    def abort(self) -> None:
        """Drop the temporary file (the previous file at ``path``, if any, is untouched)."""
        if not self._open:
            return
        try:
            with contextlib.suppress(OSError):
                self._writer.close()
        finally:
            self._discard()


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
    of a shard's tables are written. A shard without its marker is incomplete and is redone. ``linked``
    names other folders whose ``<table>/<shard>.parquet`` files belong to the same shards (the final
    dataset of a run belongs to the last stage's shards).

    The marker records the size and SHA-256 of every output file. A shard whose files no longer match
    (truncated, overwritten, deleted) or whose marker is unreadable is not done: :meth:`done_shards`
    and :meth:`is_done` compare sizes, and :meth:`is_done` with a config hash (a stage deciding whether
    to skip a video) also the checksums; each says so in a warning, and the stage redoes the video.
    """

    def __init__(
        self, root: str | os.PathLike[str], linked: Mapping[str, str | os.PathLike[str]] | None = None
    ) -> None:
        self.root = Path(root)
        self.linked = {safe_name(k, "linked folder"): Path(v) for k, v in (linked or {}).items()}

    def table_path(self, table: str, shard: str) -> Path:
        """Path of ``table``'s file for ``shard`` (UnsafeNameError when either would escape the folder)."""
        return self.root / safe_name(table, "table") / f"{safe_name(shard, 'shard id')}.parquet"

    def linked_path(self, link: str, table: str, shard: str) -> Path:
        """Path of ``table``'s file for ``shard`` in the linked folder ``link``."""
        return self.linked[link] / safe_name(table, "table") / f"{safe_name(shard, 'shard id')}.parquet"

    def marker_path(self, shard: str) -> Path:
        """Path of ``shard``'s completion marker."""
        return self.root / "_done" / f"{safe_name(shard, 'shard id')}.json"

    def _folders(self) -> list[tuple[str, Path]]:
        return [("", self.root), *((f"{k}/", v) for k, v in self.linked.items())]

    def output_files(self, shard: str) -> dict[str, Path]:
        """The files of ``shard`` present now, by ``table`` (``link/table`` in a linked folder)."""
        name = f"{safe_name(shard, 'shard id')}.parquet"
        out: dict[str, Path] = {}
        for prefix, folder in self._folders():
            if not folder.is_dir():
                continue
            for table_dir in sorted(folder.iterdir()):
                if table_dir.is_dir() and not table_dir.name.startswith(("_", ".")):
                    if (table_dir / name).is_file():
                        out[prefix + table_dir.name] = table_dir / name
        return out

    def _output_path(self, key: str, shard: str) -> Path | None:
        link, _, table = key.rpartition("/")
        folder = self.linked.get(link) if link else self.root
        if folder is None or unsafe_name_reason(table) or unsafe_name_reason(shard):
            return None
        return folder / table / f"{shard}.parquet"

    def _read_marker(self, path: Path) -> dict[str, Any] | None:
        try:
            marker = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return marker if isinstance(marker, dict) else None

    def damage(self, shard: str, marker: dict[str, Any], checksums: bool = False) -> str | None:
        """Why ``shard``'s outputs do not match ``marker`` (None when they do)."""
        outputs = marker.get("outputs")
        if outputs is None:
            return None  # a marker written before outputs were recorded
        if not isinstance(outputs, dict):
            return "its completion marker is damaged"
        for key, record in sorted(outputs.items()):
            path = self._output_path(str(key), shard)
            if path is None or not isinstance(record, dict):
                return f"its completion marker lists an unknown output {key!r}"
            try:
                st = path.stat()
            except FileNotFoundError:
                return f"{path} is missing"
            except OSError as exc:
                return f"{path} cannot be read ({exc.strerror or exc})"
            if not stat.S_ISREG(st.st_mode):
                return f"{path} is not a regular file"
            if st.st_size != record.get("size"):
                return (
                    f"{path} has {st.st_size} bytes where its completion marker recorded "
                    f"{record.get('size')} (truncated or overwritten)"
                )
            if checksums and record.get("sha256"):
                try:
                    digest = file_sha256(path)
                except OSError as exc:
                    return f"{path} cannot be read ({exc.strerror or exc})"
                if digest != record["sha256"]:
                    return f"{path} does not match the checksum in its completion marker (damaged)"
        return None

    def is_done(self, shard: str, config_hash: str | None = None) -> bool:
        """True when ``shard`` is complete and whole (and, if given, was made with the same config hash).

        With ``config_hash`` the outputs' checksums are verified too; otherwise their sizes.
        """
        path = self.marker_path(shard)
        if not path.exists():
            return False
        marker = self._read_marker(path)
        if marker is None:
            _warn_once(
                f"{path}: completion marker is empty or damaged: shard {shard} counts as not done and is redone"
            )
            return False
        if marker.get("shard") != shard:
            _warn_once(
                f"{path}: completion marker names shard {marker.get('shard')!r}, not {shard!r}: ignored"
            )
            return False
        if config_hash is not None and marker.get("config_hash") != config_hash:
            return False
        problem = self.damage(shard, marker, checksums=config_hash is not None)
        if problem:
            _warn_once(f"{self.root.name} {shard}: {problem}: the shard counts as not done and is redone")
            return False
        return True

    def marker(self, shard: str) -> dict[str, Any]:
        """The contents of ``shard``'s completion marker ({} when absent or unreadable)."""
        return self._read_marker(self.marker_path(shard)) or {}

    def mark_done(self, shard: str, config_hash: str, **info: Any) -> None:
        """Write ``shard``'s completion marker (call only after all its tables are written).

        The marker records each output file's size and SHA-256, so later runs notice a damaged output.
        """
        outputs = {
            key: {"size": path.stat().st_size, "sha256": file_sha256(path)}
            for key, path in self.output_files(shard).items()
        }
        record = {**info, "shard": shard, "config_hash": config_hash, "outputs": outputs}
        write_json_atomic(self.marker_path(shard), record)

    def clear(self, shard: str) -> None:
        """Forget ``shard``: remove its marker, then its files (so a crash in between leaves it incomplete)."""
        self.marker_path(shard).unlink(missing_ok=True)
        for path in self.output_files(shard).values():
            path.unlink(missing_ok=True)

    def done_shards(self) -> list[str]:
        """Shards with a readable completion marker whose output files have the sizes it recorded, sorted.

        Any other marker (empty, truncated, naming another shard, over a damaged output) is left out with
        a warning, so the stage redoes that shard.
        """
        folder = self.root / "_done"
        if not folder.is_dir():
            return []
        shards = []
        for path in sorted(folder.glob("*.json")):
            marker = self._read_marker(path)
            if marker is None:
                _warn_once(
                    f"{path}: completion marker is empty or damaged: {path.stem} counts as not done and is redone"
                )
                continue
            shard = marker.get("shard")
            if not isinstance(shard, str) or shard != path.stem or unsafe_name_reason(shard):
                _warn_once(f"{path}: completion marker names shard {shard!r}, not {path.stem!r}: ignored")
                continue
            problem = self.damage(shard, marker)
            if problem:
                _warn_once(f"{self.root.name} {shard}: {problem}: the shard counts as not done and is redone")
                continue
            shards.append(shard)
        return shards

    def paths(self, table: str, shards: Iterable[str] | None = None) -> list[Path]:
        """Files of ``table`` for the given shards (default: every completed shard)."""
        shards = self.done_shards() if shards is None else shards
        return [p for s in shards if (p := self.table_path(table, s)).exists()]

    def read(self, table: str, schema: pa.Schema, shards: Iterable[str] | None = None) -> pa.Table:
        """Concatenate ``table`` over completed shards."""
        return read_tables(self.paths(table, shards), schema)


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    # Shard listings are read many times per command; each problem is said once per process.
    if message not in _WARNED:
        _WARNED.add(message)
        log.warning("%s", message)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file's contents, as hex."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


MAX_NAME_BYTES = 200
"""Longest file name made from data (file systems allow 255 bytes; room is left for suffixes)."""


class UnsafeNameError(InputError):
    """An id or label from the data cannot be used as a file name (it would leave its folder)."""


def unsafe_name_reason(name: Any) -> str | None:
    """Why ``name`` cannot be a file name inside a folder (None when it can)."""
    if not isinstance(name, str) or not name:
        return "empty"
    if "/" in name or "\\" in name or (os.altsep and os.altsep in name):
        return "contains a path separator"
    if name.startswith("."):
        return "starts with a dot (a parent folder or a hidden file)"
    if any(unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp") for c in name):
        return "contains a control or invisible formatting character"
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        return f"longer than {MAX_NAME_BYTES} bytes"
    return None


def safe_name(name: str, what: str = "name") -> str:
    """``name`` unchanged when it is usable as a file name; UnsafeNameError naming it otherwise.

    Every file name made from data (shard and video ids, identities, gallery names, removal reasons)
    goes through here: separators, ``..`` and other leading dots, absolute paths, control characters
    and over-long names are refused, never rewritten, so two ids can never share a file.
    """
    why = unsafe_name_reason(name)
    if why:
        raise UnsafeNameError(f"{what} {name!r}: not usable as a file name ({why})")
    return name


def data_file(folder: str | os.PathLike[str], name: str, suffix: str, what: str = "name") -> Path:
    """``folder/<name><suffix>`` for a ``name`` taken from data (refused by :func:`safe_name` if unsafe)."""
    return Path(folder) / f"{safe_name(name, what)}{suffix}"


def load_torch_weights(
    path: str | os.PathLike[str], map_location: str = "cpu", what: str = "weights file"
) -> Any:
    """``torch.load`` with ``weights_only=True``: tensors and plain Python values, never code.

    A file that holds anything else (a pickled object whose loading would call a function) is refused
    with one line of ours naming the file and the object; a damaged file is one line naming it too.
    """
    import pickle
    import re

    import torch

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: {what} not found")
    if not path.is_file():
        raise InputError(f"{path}: {what} is not a regular file")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        held = f" ({found.group(1)})" if found else ""
        raise InputError(
            f"{path}: refused: the {what} holds Python objects{held} whose loading could run code; "
            "seqbuild reads only tensors and plain values"
        ) from None
    except Exception as exc:  # torch raises several types for damaged or foreign files
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        first = first.split(". ")[0][:160]
        raise InputError(f"{path}: not a readable {what} ({type(exc).__name__}: {first})") from None
