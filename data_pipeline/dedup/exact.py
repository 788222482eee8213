"""Exact document dedup: documents whose normalized texts hash alike form one cluster.

Steps (each resumable): hash every shard in parallel -> group hashes across all shards and pick
survivors -> write kept/excluded per shard -> manifests and stats.json.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from .common import (Shard, apply_cluster_decisions, cluster_decisions, doc_meta, finish_stage, input_shards,
                     iter_shard, load_config, prepare_work, read_arrow, run_apply, survivor_rank, timed,
                     write_arrow)
from .parallel import run_tasks
from .text import text_digest

STAGE = "exact_dedup"
REASON = "exact_duplicate"


@dataclass
class ExactConfig:
    digest_bytes: int = 16      # blake2b digest of the normalized text


def _hash_shard(shard: Shard, work: Path, digest_bytes: int) -> None:
    parts = []
    for batch in iter_shard(shard, ["id", "text", "quality_score"]):
        texts = batch.column("text").to_pylist()
        digests = [text_digest(t or "", digest_bytes) for t in texts]
        parts.append(pa.table({**doc_meta(batch), "digest": pa.array(digests, pa.binary(digest_bytes))}))
    write_arrow(work / "hashes" / f"{shard.name}.arrow", _concat(parts, digest_bytes))


def _concat(parts: list[pa.Table], digest_bytes: int) -> pa.Table:
    schema = pa.schema([("id", pa.string()), ("quality_score", pa.float32()), ("n_chars", pa.int64()),
                        ("digest", pa.binary(digest_bytes))])
    return pa.concat_tables([p.cast(schema) for p in parts]) if parts else schema.empty_table()


def _group_roots(digests: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """root_rank[r]: best rank among the documents whose digest equals that of the document of rank r."""
    order = np.lexsort((rank,) + tuple(digests[:, k] for k in reversed(range(digests.shape[1]))))
    sorted_digests = digests[order]
    new_group = np.ones(len(order), dtype=bool)
    new_group[1:] = (sorted_digests[1:] != sorted_digests[:-1]).any(axis=1)
    first = np.maximum.accumulate(np.where(new_group, np.arange(len(order)), 0))
    root_rank = np.empty(len(order), dtype=np.int64)
    root_rank[rank[order]] = rank[order[first]]
    return root_rank


def run(input_dir: Path, output_dir: Path, cfg: dict, workers: int = 1, executor: str = "local",
        ray_address: str | None = None, stage: str = STAGE) -> dict:
    started = t0 = time.time()
    conf = load_config(cfg, ExactConfig, "dedup.exact")
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    work = output_dir / "work"
    shards = input_shards(input_dir)
    prepare_work(input_dir, output_dir, stage, conf)
    steps: dict = {}
    todo = [s for s in shards if not (work / "hashes" / f"{s.name}.arrow").is_file()]
    run_tasks(_hash_shard, [(s, work, conf.digest_bytes) for s in todo], workers=workers, executor=executor,
              ray_address=ray_address, desc=f"{stage}: hash")
    t0 = timed(steps, "hash", t0)

    decisions = work / "decisions.arrow"
    if not decisions.is_file():
        meta = pa.concat_tables([read_arrow(work / "hashes" / f"{s.name}.arrow") for s in shards])
        rank = survivor_rank(meta.select(["id", "quality_score", "n_chars"]))
        digest_col = meta.column("digest").combine_chunks()
        raw = np.frombuffer(digest_col.buffers()[1], dtype=np.uint8)
        raw = raw[digest_col.offset * conf.digest_bytes:(digest_col.offset + len(meta)) * conf.digest_bytes]
        digests = raw.reshape(len(meta), conf.digest_bytes)
        write_arrow(decisions, cluster_decisions(meta, rank, _group_roots(digests, rank)))
    t0 = timed(steps, "group", t0)

    records = run_apply(stage, output_dir, shards, apply_cluster_decisions, (str(decisions), stage, REASON),
                        workers=workers, executor=executor, ray_address=ray_address)
    timed(steps, "write", t0)
    table = read_arrow(decisions)
    clusters = len(np.unique(table.column("cluster_id").to_numpy())) if len(table) else 0
    return finish_stage(stage, output_dir, records, started, {"clusters": clusters, **steps})
