"""Survivor order of every document (quality desc, length desc, id asc) without a global sort in
one process: a range-partitioned sort.

  1. splitters  the driver samples a (quality, length) sort key from every shard, one shard at a time,
                and cuts the sample into P ranges (equal keys fall in one range).
  2. split      per input shard, in parallel: its documents' keys, ids and indices as P record batches.
  3. sort       per range, in parallel: the range's documents sorted by the full key (common.survivor_rank,
                ties broken by id), written as document indices.
  4. assemble   the driver streams the sorted ranges into work/order/doc.npy (document of each rank)
                and scatters rank.npy (rank of each document), both memory-mapped files.
P = ceil(documents * ORDER_BYTES_PER_DOC / memory_budget_mb). The concatenated ranges are the
global sort: ranges follow key order and a key never spans two ranges.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from stack_common.atomic import atomic_path

from .common import (Shard, partition_count, read_columns, read_partition, survivor_rank, write_arrow,
                     write_partitioned)
from .parallel import run_tasks

ORDER_BYTES_PER_DOC = 160      # id (up to ~64 B), quality, length, index, sort indices, Arrow's sort temporaries
SAMPLE_PER_RANGE = 64
META = ["id", "quality_score", "n_chars"]
SPLIT_SCHEMA = pa.schema([("doc", pa.int64()), ("id", pa.string()), ("quality_score", pa.float32()),
                          ("n_chars", pa.int64())])


def range_key(meta: pa.Table) -> np.ndarray:
    """uint64 that ascends with the survivor order up to ties: quality desc (null last), then length desc."""
    quality = meta.column("quality_score").to_numpy(zero_copy_only=False).astype(np.float32) + np.float32(0.0)
    bits = quality.view(np.uint32)                                            # -0.0 became 0.0 above
    ascending = np.where(bits >> np.uint32(31), ~bits, bits | np.uint32(0x80000000))
    q = np.where(np.isnan(quality), np.uint32(0xFFFFFFFF), ~ascending).astype(np.uint64)   # null: last
    n_chars = np.minimum(meta.column("n_chars").to_numpy().astype(np.uint64), np.uint64(0xFFFFFFFF))
    return (q << np.uint64(32)) | (np.uint64(0xFFFFFFFF) - n_chars)


def _splitters(meta_dir: Path, shards: list[Shard], parts: int) -> np.ndarray:
    n_docs = sum(s.rows for s in shards)
    step = max(1, n_docs // (parts * SAMPLE_PER_RANGE))
    sample = [np.zeros(0, np.uint64)]
    for shard in shards:
        keys = range_key(read_columns(meta_dir / f"{shard.name}.arrow", META[1:]))
        sample.append(keys[(-shard.first_doc) % step::step])             # every step-th document overall
    sample = np.sort(np.concatenate(sample))
    return np.unique(sample[(np.arange(1, parts) * len(sample)) // parts]) if len(sample) else sample


def _split_shard(shard: Shard, work: Path, meta_dir: Path, splitters: np.ndarray, parts: int) -> None:
    meta = read_columns(meta_dir / f"{shard.name}.arrow", META)
    part = np.searchsorted(splitters, range_key(meta), side="right")
    columns = {"doc": shard.first_doc + np.arange(len(meta), dtype=np.int64),
               **{name: meta.column(name).combine_chunks() for name in META}}
    write_partitioned(work / "order" / f"split-{shard.name}.arrow", SPLIT_SCHEMA, columns, part, parts)


def _sort_range(part: int, work: Path, names: list[str]) -> int:
    batches = [read_partition(work / "order" / f"split-{n}.arrow", part) for n in names]
    table = pa.Table.from_batches(batches, schema=SPLIT_SCHEMA)
    docs = table.column("doc").to_numpy()
    rank = survivor_rank(table.select(META))
    by_rank = np.empty_like(docs)
    by_rank[rank] = docs
    write_arrow(work / "order" / f"sorted-{part:05d}.arrow", pa.table({"doc": by_rank}), compression=None)
    return len(docs)


def build_order(work: Path, shards: list[Shard], meta_dir: str, memory_budget_mb: float, stage: str, **par) -> int:
    """work/order/rank.npy and doc.npy (common.read_order); returns the number of ranges."""
    n_docs = sum(s.rows for s in shards)
    parts = partition_count(n_docs, ORDER_BYTES_PER_DOC, memory_budget_mb)
    if (work / "order" / "rank.npy").is_file():
        return parts
    names = [s.name for s in shards]
    splitters = _splitters(work / meta_dir, shards, parts)
    todo = [s for s in shards if not (work / "order" / f"split-{s.name}.arrow").is_file()]
    run_tasks(_split_shard, [(s, work, work / meta_dir, splitters, parts) for s in todo], desc=f"{stage}: order split", **par)
    todo = [p for p in range(parts) if not (work / "order" / f"sorted-{p:05d}.arrow").is_file()]
    run_tasks(_sort_range, [(p, work, names) for p in todo], desc=f"{stage}: order sort", **par)
    # rank.npy, renamed last, marks the order done.
    with atomic_path(work / "order" / "rank.npy") as rank_tmp, atomic_path(work / "order" / "doc.npy") as doc_tmp:
        by_rank = np.lib.format.open_memmap(doc_tmp, mode="w+", dtype=np.int64, shape=(n_docs,))
        rank = np.lib.format.open_memmap(rank_tmp, mode="w+", dtype=np.int64, shape=(n_docs,))
        start = 0
        for p in range(parts):
            docs = pa.ipc.open_file(pa.memory_map(str(work / "order" / f"sorted-{p:05d}.arrow"))).read_all()
            docs = docs.column("doc").to_numpy()
            by_rank[start:start + len(docs)] = docs
            rank[docs] = np.arange(start, start + len(docs), dtype=np.int64)
            start += len(docs)
        assert start == n_docs, (start, n_docs)
        by_rank.flush()
        rank.flush()
        del by_rank, rank
    return parts
