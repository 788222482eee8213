"""Input side: resolve shard directories (globs allowed), check their schema, stream documents."""
from __future__ import annotations

import glob
import hashlib
from pathlib import Path
from typing import Iterator, Sequence

import pyarrow as pa

from stack_common.errors import UserError
from stack_common.shards import iter_file_batches, manifest_schema, shard_paths

SCHEMA_HINT = "Arrow shards with data_pipeline.schema.DOC_SCHEMA (id, text, lang, source, ...)"


def resolve_inputs(patterns: Sequence[str]) -> list[Path]:
    """Shard directories named by `patterns` (paths or globs), in order, without repeats."""
    if not patterns:
        raise UserError("no input given: set input=[SHARD_DIR, ...] (globs allowed)")
    dirs: list[Path] = []
    for pattern in patterns:
        # A glob picks directories only (`out/*` may also match files such as a stats.json).
        matches = sorted(m for m in glob.glob(pattern) if Path(m).is_dir()) if glob.has_magic(pattern) else [pattern]
        if not matches:
            raise UserError("no shard directory matches this pattern", file=pattern)
        for match in matches:
            path = Path(match)
            if path not in dirs:
                dirs.append(path)
    return dirs


def require_columns(shard_dir: Path, columns: Sequence[str]) -> None:
    """Fail with file and field named when a shard directory lacks a column or has the wrong type."""
    schema = manifest_schema(shard_dir)  # also checks the directory is complete
    for name in columns:
        if name not in schema.names:
            raise UserError("shards lack a required column", file=shard_dir, field=name, expected=SCHEMA_HINT)
        if not (pa.types.is_string(schema.field(name).type) or pa.types.is_large_string(schema.field(name).type)):
            raise UserError(f"column has type {schema.field(name).type}", file=shard_dir, field=name, expected="string")


def shard_files(dirs: Sequence[Path], columns: Sequence[str]) -> list[Path]:
    """Every complete shard file of `dirs` (manifest order), after checking each dir's schema."""
    files = []
    for d in dirs:
        require_columns(d, columns)
        files.extend(shard_paths(d))
    return files


def iter_docs(files: Sequence[Path], columns: Sequence[str]) -> Iterator[tuple[Path, pa.RecordBatch]]:
    """(file, record batch) pairs over `files`, memory-mapped: the corpus is never loaded whole."""
    for path in files:
        for batch in iter_file_batches(path, columns):
            yield path, batch


def unit_hash(seed: int, salt: str, key: str) -> float:
    """A uniform number in [0, 1) fixed by (seed, salt, key): the same choice on every run."""
    digest = hashlib.blake2b(f"{seed}\x00{salt}\x00{key}".encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0 ** 64
