"""Arrow IPC shards (zstd by default) with a manifest: the one format every stage reads and writes.

A shard directory holds `<prefix>-NNNNN.arrow` files and a `manifest.json` listing each file
with its rows, bytes and sha256, plus the schema. The manifest is written last, atomically,
so a directory without one is incomplete; every shard is renamed into place only when
closed, so a killed writer leaves only `.…tmp` names that nothing reads.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import pyarrow as pa
import pyarrow.fs as pafs

from .atomic import atomic_write_json, publish, read_json, remove_stale_tmp, sha256_file, tmp_name_for
from .errors import ConfigError, UserError
from .storage import Place, is_uri, public_uri

MANIFEST = "manifest.json"
FORMAT = "bc-arrow-shards/1"
DEFAULT_TARGET_BYTES = 256 * 1024 * 1024


def schema_to_json(schema: pa.Schema) -> dict:
    return {
        "fields": [{"name": f.name, "type": str(f.type), "nullable": f.nullable} for f in schema],
        "ipc": base64.b64encode(schema.serialize().to_pybytes()).decode("ascii"),
    }


def schema_from_json(obj: dict) -> pa.Schema:
    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(obj["ipc"])))


CODECS = ("zstd", "lz4", "none")


@dataclass
class ShardCompression:
    """Arrow IPC buffer compression of document shards (`shards:` in a pipeline config). Readers
    need no setting: pyarrow decompresses what it reads, so directories written with different
    settings mix freely. Work artifacts that are memory-mapped or read with pread are written
    uncompressed by their own code, never through this."""
    compression: str = "zstd"          # zstd | lz4 (lz4 frame) | none
    zstd_level: int = 3                # 1 (Arrow's default) to 22; used by zstd only

    def __post_init__(self) -> None:
        problems = []
        if self.compression not in CODECS:
            problems.append(f"shards.compression: one of {', '.join(CODECS)}, got '{self.compression}'")
        if not 1 <= self.zstd_level <= 22:
            problems.append(f"shards.zstd_level: 1 to 22, got {self.zstd_level}")
        if problems:
            raise ConfigError(problems)

    def codec(self) -> pa.Codec | None:
        """What `ArrowWriter(compression=...)` takes."""
        if self.compression == "none":
            return None
        if self.compression == "lz4":
            return pa.Codec("lz4_frame")
        return pa.Codec("zstd", compression_level=self.zstd_level)


@dataclass
class ShardFile:
    name: str
    rows: int
    bytes: int
    sha256: str


class ArrowWriter:
    """The one Arrow IPC writer: every file is written under a temporary name and renamed into
    place only when complete.

    Directory mode (default): `<prefix>-NNNNN.arrow` files of about `target_bytes` each (batches
    are sliced to stay near it), and a manifest on close unless write_manifest=False.
    File mode (`single_file=True`, `out` is the file): one file holding every batch exactly as
    written, present (possibly empty) after close.
    `write` takes a record batch, a table, a list of row dicts or a dict of columns; `add` takes
    one row, buffered into batches of `batch_rows` (the same batches, hence bytes, for any caller).
    `compression`: "zstd", "lz4", None, or a pa.Codec (`ShardCompression.codec()`); the batches do
    not depend on it, the bytes do, and so does where a directory's files split (at target_bytes on disk).
    As a context manager, leaving with an exception removes the file in progress, writes no manifest.
    """

    def __init__(self, out: str | os.PathLike, schema: pa.Schema, *, single_file: bool = False,
                 prefix: str = "shard", target_bytes: int = DEFAULT_TARGET_BYTES,
                 compression: str | pa.Codec | None = "zstd", write_manifest: bool = True, first_index: int = 0,
                 batch_rows: int = 2000):
        self.single_file = single_file
        self._remote = None if not is_uri(out) else Place.of(out)   # a URI: written through pyarrow.fs
        if self._remote is not None:
            self._dir = self._remote.parent() if single_file else self._remote   # its query kept
            self._dir.make_dirs()
            self.out_dir = self._dir.uri
            self.path = self._remote.uri if single_file else None
        else:
            self.out_dir = Path(out).parent if single_file else Path(out)
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self.path = Path(out) if single_file else None
        self.schema = schema
        self.prefix = prefix
        self.target_bytes = target_bytes
        self.options = pa.ipc.IpcWriteOptions(compression=compression)
        self.write_manifest = write_manifest and not single_file
        self.batch_rows = batch_rows
        self.files: list[ShardFile] = []
        self._index = first_index
        self._sink = None
        self._writer = None
        self._tmp: Path | None = None
        self._rows = 0
        self._buffer: list[dict] = []

    def _final(self):
        """The file being written: a Path, or a Place for a URI."""
        if self.single_file:
            return self._remote or self.path
        name = f"{self.prefix}-{self._index:05d}.arrow"
        return self._dir.child(name) if self._remote is not None else self.out_dir / name

    def _open(self) -> None:
        if self._remote is not None:
            self._tmp = self._final().tmp_sibling()
            self._sink = self._tmp.open_output()
        else:
            self._tmp = tmp_name_for(self._final())
            self._sink = pa.OSFile(str(self._tmp), "wb")
        self._writer = pa.ipc.new_file(self._sink, self.schema, options=self.options)
        self._rows = 0

    def _close_current(self) -> None:
        if self._writer is None:
            return
        self._writer.close()
        self._sink.close()
        final = self._final()
        if self._remote is not None:
            self._tmp.move_to(final)
            if not self.single_file:
                self.files.append(ShardFile(final.name, self._rows, final.size(), final.sha256()))
        else:
            publish(self._tmp, final)
            if not self.single_file:
                self.files.append(ShardFile(final.name, self._rows, final.stat().st_size, sha256_file(final)))
        self._writer = self._sink = self._tmp = None
        self._index += 1

    def write(self, data: pa.RecordBatch | pa.Table | Sequence[dict] | dict) -> None:
        if isinstance(data, dict):
            data = pa.record_batch(data, schema=self.schema)
        elif isinstance(data, (list, tuple)):
            data = pa.Table.from_pylist(list(data), schema=self.schema)
        if self.single_file:
            self._write_as_given(data)
            return
        for batch in data.to_batches() if isinstance(data, pa.Table) else [data]:
            if batch.num_rows:
                self._write_sliced(batch)

    def _write_as_given(self, data: pa.RecordBatch | pa.Table) -> None:
        if self._writer is None:
            self._open()
        if isinstance(data, pa.Table):
            self._writer.write_table(data)
        else:
            self._writer.write_batch(data)
        self._rows += data.num_rows

    def _write_sliced(self, batch: pa.RecordBatch) -> None:
        if not batch.schema.equals(self.schema):
            batch = pa.Table.from_batches([batch]).cast(self.schema).combine_chunks().to_batches()[0]
        # Slices of about a quarter of the target (uncompressed) keep shard sizes near it.
        row_bytes = max(1, batch.nbytes // batch.num_rows)
        step = max(1, min(65536, self.target_bytes // (4 * row_bytes)))
        for start in range(0, batch.num_rows, step):
            if self._writer is None:
                self._open()
            piece = batch.slice(start, step)
            self._writer.write_batch(piece)
            self._rows += piece.num_rows
            if self._sink.tell() >= self.target_bytes:
                self._close_current()

    def add(self, row: dict) -> None:
        self._buffer.append(row)
        if len(self._buffer) >= self.batch_rows:
            self.flush()

    def flush(self) -> None:
        if self._buffer:
            rows, self._buffer = self._buffer, []
            self.write(rows)

    def close(self, extra: dict | None = None) -> list[ShardFile]:
        self.flush()
        if self.single_file and self._writer is None and self._index == 0:
            self._open()   # a file that got no batch still exists, with its schema
        self._close_current()
        if self.write_manifest:
            write_manifest(self.out_dir, self.files, self.schema, extra)
        return self.files

    def abort(self) -> None:
        self._buffer = []
        if self._writer is not None:
            try:
                self._writer.close()
                self._sink.close()
            finally:
                if self._remote is not None:
                    self._tmp.delete()
                else:
                    Path(self._tmp).unlink(missing_ok=True)
            self._writer = None

    def __enter__(self) -> "ArrowWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


ShardWriter = ArrowWriter   # the directory mode's historical name


def write_arrow(path: str | os.PathLike, table: pa.Table, compression: str | pa.Codec | None = "zstd") -> None:
    """One table as one Arrow IPC file, written atomically (work artifacts)."""
    with ArrowWriter(path, table.schema, single_file=True, compression=compression) as writer:
        writer.write(table)


def read_arrow(path: str | os.PathLike) -> pa.Table:
    with Place.of(path).open_input() as src:
        return pa.ipc.open_file(src).read_all()


def write_manifest(out_dir: str | os.PathLike, files: Iterable[ShardFile], schema: pa.Schema,
                   extra: dict | None = None) -> dict:
    files = list(files)
    manifest = {
        "format": FORMAT,
        "files": [f.__dict__ for f in files],
        "rows": sum(f.rows for f in files),
        "bytes": sum(f.bytes for f in files),
        "schema": schema_to_json(schema),
        "extra": extra or {},
    }
    if is_uri(out_dir):
        text = json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"
        Place.of(out_dir).child(MANIFEST).write_bytes(text.encode("utf-8"))
    else:
        atomic_write_json(Path(out_dir) / MANIFEST, manifest)
    return manifest


def write_table(out_dir: str | os.PathLike, table: pa.Table, **kwargs) -> list[ShardFile]:
    """Write one table as a complete shard directory."""
    extra = kwargs.pop("extra", None)
    writer = ArrowWriter(out_dir, table.schema, **kwargs)
    try:
        writer.write(table)
    except BaseException:
        writer.abort()
        raise
    return writer.close(extra)


def read_manifest(shard_dir: str | os.PathLike) -> dict:
    """The manifest of a shard directory (a local path or a URI)."""
    place = Place.of(shard_dir)
    path = place.child(MANIFEST)
    if not place.is_dir():
        raise UserError("shard directory does not exist", file=public_uri(shard_dir))
    if not path.is_file():
        raise UserError("no manifest.json: the shard directory is incomplete (its writer did not finish)",
                        file=public_uri(shard_dir))
    path = path.location()
    try:
        manifest = read_json(path) if not is_uri(path) else json.loads(Place.of(path).read_bytes())
    except json.JSONDecodeError as err:
        raise UserError(f"manifest is not valid JSON ({err})", file=public_uri(path)) from None
    if manifest.get("format") != FORMAT:
        raise UserError(f"unknown manifest format {manifest.get('format')!r}", file=public_uri(path), expected=FORMAT)
    return manifest


def manifest_schema(shard_dir: str | os.PathLike) -> pa.Schema:
    return schema_from_json(read_manifest(shard_dir)["schema"])


def shard_paths(shard_dir: str | os.PathLike, verify: bool = False) -> list:
    """Paths (URIs for a URI directory) of the complete shards listed in the manifest; with verify,
    check size and sha256."""
    manifest = read_manifest(shard_dir)
    paths = []
    for entry in manifest["files"]:
        place = Place.of(shard_dir).child(entry["name"])
        path = place.location()
        info = place.info()
        if info.type != pafs.FileType.File:
            raise UserError("shard listed in manifest is missing", file=public_uri(path))
        if info.size != entry["bytes"]:
            raise UserError(f"shard has {info.size} bytes, manifest says {entry['bytes']}", file=public_uri(path))
        if verify and (sha256_file(path) if place.local else place.sha256()) != entry["sha256"]:
            raise UserError("shard sha256 does not match the manifest", file=public_uri(path))
        paths.append(path)
    return paths


def iter_file_batches(path: str | os.PathLike, columns: Sequence[str] | None = None) -> Iterator[pa.RecordBatch]:
    """Record batches of one Arrow file; with `columns`, only those are read and decoded (in that order)."""
    with Place.of(path).open_input() as src:
        reader = pa.ipc.open_file(src)
        if columns:
            names = reader.schema.names
            missing = [c for c in columns if c not in names]
            if missing:
                raise UserError(f"shard lacks column(s) {', '.join(missing)}", file=public_uri(path),
                                expected=f"columns {', '.join(names)}")
            fields = sorted({names.index(c) for c in columns})
            reader = pa.ipc.open_file(src, options=pa.ipc.IpcReadOptions(included_fields=fields))
        for i in range(reader.num_record_batches):
            batch = reader.get_batch(i)
            yield batch.select(columns) if columns else batch


def iter_batches(shard_dir: str | os.PathLike, columns: Sequence[str] | None = None,
                 verify: bool = False) -> Iterator[pa.RecordBatch]:
    """Record batches of every complete shard, in manifest order."""
    for path in shard_paths(shard_dir, verify=verify):
        yield from iter_file_batches(path, columns)


def read_table(shard_dir: str | os.PathLike, columns: Sequence[str] | None = None) -> pa.Table:
    schema = manifest_schema(shard_dir)
    if columns:
        schema = pa.schema([schema.field(c) for c in columns])
    return pa.Table.from_batches(list(iter_batches(shard_dir, columns)), schema=schema)


def records_sha256(shard_dir: str | os.PathLike, block_rows: int = 8192) -> str:
    """sha256 of a shard directory's schema and records in order, whatever their codec and however
    they are split into files and batches (file bytes differ with `shards.compression`): the rows
    are re-cut into blocks of `block_rows`, each copied (`take`: a slice would serialize its parent's
    whole buffers) and hashed in uncompressed IPC form."""
    schema = manifest_schema(shard_dir)
    digest = hashlib.sha256(schema.serialize().to_pybytes())

    def add(table: pa.Table) -> None:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, schema, options=pa.ipc.IpcWriteOptions(compression=None)) as writer:
            writer.write_table(table.take(pa.array(range(table.num_rows), pa.int64())).combine_chunks())
        digest.update(sink.getvalue().to_pybytes())

    pending: list[pa.RecordBatch] = []
    rows = 0
    for batch in iter_batches(shard_dir):
        pending.append(batch)
        rows += batch.num_rows
        while rows >= block_rows:
            table = pa.Table.from_batches(pending, schema)
            add(table.slice(0, block_rows))
            pending, rows = table.slice(block_rows).to_batches(), rows - block_rows
    if rows:
        add(pa.Table.from_batches(pending, schema))
    return digest.hexdigest()


def clean_incomplete(shard_dir: str | os.PathLike) -> int:
    """Remove temporary files left by a killed writer (for resuming into the same directory)."""
    return remove_stale_tmp(shard_dir)
