"""Exact document dedup: documents whose normalized texts hash alike form one cluster.

Steps (each resumable; an artifact under work/ that exists is not recomputed):
  1. hash      per input shard, in parallel: survivor meta (id, quality, length) and the (doc, id, digest)
               rows, partitioned by digest prefix into P record batches of one uncompressed file.
  2. order     survivor rank of every document (order.py, a range-partitioned sort).
  3. rank      per input shard, in parallel: its slice of the ranks added to its digest partitions.
  4. group     per partition, in parallel: equal digests form a group; its best-ranked document
               survives. Groups never span partitions, so no merge is needed: each task writes its
               whole clusters by survivor rank range (common.write_clusters).
  5. decisions per rank range, in parallel: clusters numbered in survivor order, rows by input shard.
  6. write     kept/excluded per shard from its decisions, then manifests and stats.json.
P = ceil(documents * (digest_bytes + 96) / memory_budget_mb): a group task holds one partition's
digests, documents, ids and ranks and their sort order.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from stack_common.atomic import read_json
from stack_common.config import Checks
from stack_common.shards import ShardCompression

from .common import (Shard, add_ranks, apply_cluster_decisions, doc_meta, finish_stage, input_shards, iter_shard,
                     load_config, partition_count, peak_rss_mb, prepare_work, read_partition, run_apply, timed,
                     write_arrow, write_clusters, write_decisions, write_partitioned)
from .order import build_order
from .parallel import run_tasks
from .text import text_digest

STAGE = "exact_dedup"
REASON = "exact_duplicate"
BYTES_PER_DOC = 96          # besides the digest: document, rank, id (~40 B), sort order and group flags in a group task


@dataclass
class ExactConfig:
    digest_bytes: int = 16      # blake2b digest of the normalized text
    memory_budget_mb: float = 1024.0   # a group task's partition of digests fits in this


def check_config(conf: ExactConfig) -> None:
    checks = Checks()
    checks.require(8 <= conf.digest_bytes <= 64, "dedup.exact.digest_bytes: must be in [8, 64]")
    checks.require(conf.memory_budget_mb > 0, "dedup.exact.memory_budget_mb: must be positive")
    checks.raise_if_any()


def _digest_schema(digest_bytes: int) -> pa.Schema:
    return pa.schema([("doc", pa.int64()), ("id", pa.string()), ("digest", pa.binary(digest_bytes))])


def _hash_shard(shard: Shard, work: Path, digest_bytes: int, parts: int) -> None:
    meta, digests, ids = [], [], []
    for batch in iter_shard(shard, ["id", "text", "quality_score"]):
        digests += [text_digest(t or "", digest_bytes) for t in batch.column("text").to_pylist()]
        meta.append(pa.table(doc_meta(batch)))
        ids.append(batch.column("id").cast(pa.string()))
    raw = np.frombuffer(b"".join(digests), dtype=np.uint8).reshape(len(digests), digest_bytes)
    prefix = raw[:, :8].copy().view(">u8").ravel()              # the digest is uniform: its prefix partitions
    docs = shard.first_doc + np.arange(len(digests), dtype=np.int64)
    write_partitioned(work / "digests" / f"{shard.name}.arrow", _digest_schema(digest_bytes),
                      {"doc": docs, "id": pa.concat_arrays(ids or [pa.array([], pa.string())]),
                       "digest": pa.array(digests, pa.binary(digest_bytes))},
                      (prefix % np.uint64(parts)).astype(np.int64), parts)
    schema = pa.schema([("id", pa.string()), ("quality_score", pa.float32()), ("n_chars", pa.int64())])
    table = pa.concat_tables([m.cast(schema) for m in meta]) if meta else schema.empty_table()
    write_arrow(work / "meta" / f"{shard.name}.arrow", table)       # last: marks the shard done


def group_members(digests: np.ndarray, rank: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(members, heads): positions of the documents whose digest (a row of `digests`) is shared, and
    the position of the best-ranked document of each one's group."""
    order = np.lexsort((rank,) + tuple(digests[:, k] for k in reversed(range(digests.shape[1]))))
    sorted_digests = digests[order]
    new_group = np.ones(len(order), dtype=bool)
    new_group[1:] = (sorted_digests[1:] != sorted_digests[:-1]).any(axis=1)
    starts = np.flatnonzero(new_group)
    sizes = np.diff(np.append(starts, len(order)))
    group = np.cumsum(new_group) - 1
    shared = sizes[group] >= 2
    return order[shared], order[starts[group]][shared]


def _digest_bytes(column: pa.FixedSizeBinaryArray, width: int) -> np.ndarray:
    """The bytes of a fixed-width binary column, a view of its data buffer."""
    data = np.frombuffer(column.buffers()[1], np.uint8) if len(column) else np.zeros(0, np.uint8)
    return data[column.offset * width:(column.offset + len(column)) * width]


def _group_partition(part: int, work: Path, names: list[str], digest_bytes: int, n_docs: int, ranges: int) -> int:
    """Groups of equal digests in one partition, written as whole clusters (common.write_clusters)."""
    batches = [read_partition(work / "ranked" / f"{n}.arrow", part) for n in names]
    column = lambda name: np.concatenate([b.column(name).to_numpy() for b in batches]  # noqa: E731
                                         + [np.zeros(0, np.int64)])
    docs, rank = column("doc"), column("rank")
    digests = np.concatenate([_digest_bytes(b.column("digest"), digest_bytes) for b in batches]
                             + [np.zeros(0, np.uint8)])
    members, heads = group_members(digests.reshape(len(docs), digest_bytes), rank)
    ids = pa.concat_arrays([b.column("id") for b in batches] + [pa.array([], pa.string())])
    return write_clusters(work / "groups" / f"part-{part:05d}.arrow", docs[members], rank[heads], docs[heads],
                          ids.take(pa.array(heads, pa.int64())), n_docs, ranges)


def run(input_dir: Path, output_dir: Path, cfg: dict, workers: int = 1, executor: str = "local",
        ray_address: str | None = None, stage: str = STAGE,
        compression: ShardCompression = ShardCompression()) -> dict:
    started = t0 = time.time()
    conf = load_config(cfg, ExactConfig, "dedup.exact")
    check_config(conf)
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    work = output_dir / "work"
    shards = input_shards(input_dir)
    prepare_work(input_dir, output_dir, stage, conf)
    names = [s.name for s in shards]
    n_docs = sum(s.rows for s in shards)
    parts = partition_count(n_docs, conf.digest_bytes + BYTES_PER_DOC, conf.memory_budget_mb)
    par = dict(workers=workers, executor=executor, ray_address=ray_address)
    steps: dict = {}
    todo = [s for s in shards if not (work / "meta" / f"{s.name}.arrow").is_file()]
    run_tasks(_hash_shard, [(s, work, conf.digest_bytes, parts) for s in todo], desc=f"{stage}: hash", **par)
    t0 = timed(steps, "hash", t0)
    peaks = {"hash": peak_rss_mb()}

    order_ranges = build_order(work, shards, "meta", conf.memory_budget_mb, stage=stage, **par)
    todo = [s for s in shards if not (work / "ranked" / f"{s.name}.arrow").is_file()]
    run_tasks(add_ranks, [(work / "digests" / f"{s.name}.arrow", work / "ranked" / f"{s.name}.arrow", work, s)
                          for s in todo], desc=f"{stage}: rank", **par)
    t0 = timed(steps, "order", t0)
    peaks["order"] = peak_rss_mb()

    groups = [work / "groups" / f"part-{p:05d}.arrow" for p in range(parts)]
    todo = [p for p in range(parts) if not groups[p].is_file()]
    run_tasks(_group_partition, [(p, work, names, conf.digest_bytes, n_docs, parts) for p in todo],
              desc=f"{stage}: group", **par)
    if not (work / "decisions.json").is_file():
        write_decisions(work, shards, groups, parts, stage, **par)
    t0 = timed(steps, "group", t0)
    peaks["group"] = peak_rss_mb()

    records = run_apply(stage, output_dir, shards, apply_cluster_decisions, (stage, REASON),
                        compression=compression, **par)
    timed(steps, "write", t0)
    peaks["write"] = peak_rss_mb()
    clusters = read_json(work / "decisions.json")["clusters"]
    return finish_stage(stage, output_dir, records, started,
                        {"clusters": clusters, "partitions": parts, "order_ranges": order_ranges, **steps,
                         "peak_rss_mb": peaks})
