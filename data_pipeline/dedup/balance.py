"""Cluster balancing (the Baichuan 2 report's "data frequency"): over-represented topics are
downsampled. Every cluster of `semantic_dedup` (annotation `cluster_id`) keeps at most a cap of
documents: `max_per_cluster`, or `cap_factor` x the median cluster size. Which documents stay:
the best in survivor order (highest quality_score, longest, smallest id), or a seeded random
sample (`keep: random`). Documents without a cluster (cluster_id -1 or none) all stay; an input
where no document has a cluster_id is refused (semantic_dedup did not run before).

Steps, each resumable, as tasks: per shard, cluster ids (work/clusters) and, partitioned by term,
each cluster's term counts (work/terms) -> per shard, cluster sizes, summed in the driver (one number
per cluster) -> the cap -> survivor order (order.py, for keep: quality) -> per shard, clustered
documents with their keep-order key by cluster partition (cluster id % P, P from
`memory_budget_mb`) -> per partition, the documents past their cluster's cap, written by input shard
(work/drops) -> per term partition, each cluster's best terms, merged (top_terms per cluster) ->
`clusters.tsv` (cluster, size, kept, top terms) and `clusters.png` (cluster sizes before and after)
in the stage directory -> kept/excluded per shard, each task reading only its own decisions.
"""
from __future__ import annotations

import hashlib
import json
import re
import time
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from stack_common.atomic import atomic_path
from stack_common.config import Checks
from stack_common.errors import UserError
from stack_common.shards import ShardCompression
from stack_common.tasks import shared_workers

from .common import (ShardOutput, Shard, add_annotations, doc_meta, finish_stage, input_shards, iter_shard,
                     load_config, partition_count, peak_rss_mb, prepare_work, read_columns, read_order,
                     read_partition, run_apply, timed, write_arrow, write_partitioned)
from .order import build_order
from .parallel import run_tasks

STAGE = "cluster_balance"
REASON = "cluster_balance.over_cap"
KEEP = ("quality", "random")
_WORD = re.compile(r"[a-z][a-z'-]{2,}")
_HAN_RUN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]{2,}")


@dataclass
class BalanceConfig:
    max_per_cluster: int = 0        # documents kept per cluster; 0: cap_factor x the median cluster size
    cap_factor: float = 2.0
    keep: str = "quality"           # quality: best survivor order first | random: a seeded sample
    seed: int = 0
    top_terms: int = 8              # terms per cluster in clusters.tsv
    terms_chars: int = 1000         # characters of each document the terms are taken from
    memory_budget_mb: float = 1024.0  # a task's partition of documents (or of cluster terms) fits in this


def check_config(conf: BalanceConfig) -> None:
    checks = Checks()
    checks.require(conf.max_per_cluster >= 0, "dedup.balance.max_per_cluster: 0 (from cap_factor) or positive")
    checks.require(conf.cap_factor > 0, "dedup.balance.cap_factor: must be positive")
    checks.require(conf.keep in KEEP, f"dedup.balance.keep: {conf.keep!r} is not one of {', '.join(KEEP)}")
    checks.require(conf.top_terms >= 0, "dedup.balance.top_terms: must be >= 0")
    checks.require(conf.memory_budget_mb > 0, "dedup.balance.memory_budget_mb: must be positive")
    checks.raise_if_any()


def doc_terms(text: str) -> set[str]:
    """English words of 3+ letters (not stop words) and Chinese character bigrams."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    lower = text.lower()
    terms = {w for w in _WORD.findall(lower) if w not in ENGLISH_STOP_WORDS}
    for run in _HAN_RUN.findall(lower):
        terms.update(run[i:i + 2] for i in range(len(run) - 1))
    return terms


NO_ANNOTATION = -2
SPLIT_BYTES_PER_DOC = 96        # doc, cluster, key and the sort's indices and temporaries
TERM_BYTES_PER_DOC = 4096       # ~100 distinct terms of 1000 characters, before and after the group-by


def cluster_of(raw: str | None) -> int:
    """The document's cluster_id; -1: none (semantic_dedup gave it no embedding, or the value is not
    a cluster number); NO_ANNOTATION: the annotations have no cluster_id (or are not a JSON object)."""
    try:
        notes = json.loads(raw) if raw else {}
    except json.JSONDecodeError:
        return NO_ANNOTATION
    if not isinstance(notes, dict) or "cluster_id" not in notes:
        return NO_ANNOTATION
    value = notes["cluster_id"]
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else -1


# ---- 1. clusters and terms per shard ------------------------------------------------------------------

TERMS_SCHEMA = pa.schema([("cluster", pa.int64()), ("term", pa.string()), ("docs", pa.int64())])


def term_partition(terms: list[str], parts: int) -> np.ndarray:
    """Partition of each term (crc32 of its UTF-8 bytes, the same in every process)."""
    return np.array([zlib.crc32(t.encode()) % parts for t in terms], np.int64)


def _scan_shard(shard: Shard, work: Path, conf: BalanceConfig, term_parts: int) -> None:
    """The shard's cluster ids (with the survivor-order columns) and, partitioned by term, how many of
    each cluster's documents hold each term."""
    metas, clusters, terms = [], [], Counter()
    for batch in iter_shard(shard, ["id", "text", "quality_score", "annotations"]):
        ids = [cluster_of(a) for a in batch.column("annotations").to_pylist()]
        for cluster, text in zip(ids, batch.column("text").to_pylist()):
            if cluster >= 0 and conf.top_terms:
                terms.update((cluster, t) for t in doc_terms((text or "")[:conf.terms_chars]))
        clusters.extend(ids)
        metas.append(pa.table(doc_meta(batch)))
    keys = sorted(terms)
    words = [t for _, t in keys]
    write_partitioned(work / "terms" / f"{shard.name}.arrow", TERMS_SCHEMA, {
        "cluster": np.array([c for c, _ in keys], np.int64), "term": pa.array(words, pa.string()),
        "docs": np.array([terms[k] for k in keys], np.int64)}, term_partition(words, term_parts), term_parts)
    meta = pa.concat_tables(metas) if metas else pa.table({"id": pa.array([], pa.string()),
                                                           "quality_score": pa.array([], pa.float32()),
                                                           "n_chars": pa.array([], pa.int64())})
    write_arrow(work / "clusters" / f"{shard.name}.arrow",
                meta.append_column("cluster", pa.array(clusters, pa.int64())))


def _cluster_of_docs(work: Path, shard: Shard) -> np.ndarray:
    return read_columns(work / "clusters" / f"{shard.name}.arrow", ["cluster"]).column("cluster").to_numpy()


def _count_shard(shard: Shard, work: Path) -> tuple[np.ndarray, int, int]:
    """(documents per cluster, documents without a cluster, documents without the annotation)."""
    cluster = _cluster_of_docs(work, shard)
    return (np.bincount(cluster[cluster >= 0]).astype(np.int64), int((cluster < 0).sum()),
            int((cluster == NO_ANNOTATION).sum()))


# ---- 2. decisions ---------------------------------------------------------------------------------------

def random_keys(ids: list[str], seed: int) -> np.ndarray:
    """The seeded sample's order: ascending key (ties: input order)."""
    return np.array([int.from_bytes(hashlib.blake2b(f"{seed}\0{i}".encode(), digest_size=8).digest(), "little")
                     for i in ids], dtype=np.uint64)


def cap_of(sizes: np.ndarray, conf: BalanceConfig) -> int:
    if conf.max_per_cluster:
        return conf.max_per_cluster
    return max(1, int(np.ceil(conf.cap_factor * np.median(sizes)))) if len(sizes) else 1


SPLIT_SCHEMA = pa.schema([("doc", pa.int64()), ("cluster", pa.int64()), ("key", pa.uint64())])


def _split_shard(shard: Shard, work: Path, keep: str, seed: int, parts: int) -> None:
    """The shard's clustered documents with their keep-order key, by cluster partition (id % parts)."""
    table = read_columns(work / "clusters" / f"{shard.name}.arrow", ["id", "cluster"])
    cluster = table.column("cluster").to_numpy()
    rows = np.flatnonzero(cluster >= 0)
    if keep == "quality":
        key = np.asarray(read_order(work)[0][shard.first_doc:shard.first_doc + shard.rows][rows]).astype(np.uint64)
    else:
        key = random_keys(table.column("id").take(pa.array(rows, pa.int64())).to_pylist(), seed)
    write_partitioned(work / "split" / f"{shard.name}.arrow", SPLIT_SCHEMA,
                      {"doc": shard.first_doc + rows, "cluster": cluster[rows], "key": key},
                      cluster[rows] % parts, parts)


def decide(cluster: np.ndarray, key: np.ndarray, doc: np.ndarray, cap: int) -> np.ndarray:
    """drop[i]: True for documents past the cap of their cluster in keep order (key, then doc)."""
    order = np.lexsort((doc, key, cluster))
    drop = np.zeros(len(cluster), dtype=bool)
    drop[order[place_in_group(cluster[order]) >= cap]] = True
    return drop


def place_in_group(grouped: np.ndarray) -> np.ndarray:
    """0, 1, 2.. along each run of equal values of `grouped` (sorted by group)."""
    if len(grouped) == 0:
        return np.zeros(0, np.int64)
    starts = np.flatnonzero(np.concatenate([[True], grouped[1:] != grouped[:-1]]))
    return np.arange(len(grouped)) - np.repeat(starts, np.diff(np.append(starts, len(grouped))))


def _decide_partition(part: int, work: Path, shards: list[Shard], cap: int) -> None:
    """The partition's documents past their cluster's cap, written by input shard."""
    table = pa.Table.from_batches([read_partition(work / "split" / f"{s.name}.arrow", part) for s in shards],
                                  schema=SPLIT_SCHEMA)
    doc = table.column("doc").to_numpy()
    dropped = np.sort(doc[decide(table.column("cluster").to_numpy(), table.column("key").to_numpy(), doc, cap)])
    first = np.array([s.first_doc for s in shards], np.int64)
    write_partitioned(work / "drops" / f"{part:05d}.arrow", pa.schema([("doc", pa.int64())]), {"doc": dropped},
                      np.searchsorted(first, dropped, side="right") - 1, len(shards))


def _top_terms_partition(part: int, work: Path, shards: list[Shard], sizes: np.ndarray, n: int) -> pa.Table:
    """Per cluster, the partition's n best terms by class-based TF-IDF: share of the cluster's documents
    holding the term x log(1 + clusters / clusters holding it). A term lives in one partition, so its
    spread over clusters is complete here."""
    terms = pa.Table.from_batches([read_partition(work / "terms" / f"{s.name}.arrow", part) for s in shards],
                                  schema=TERMS_SCHEMA)
    if len(terms) == 0:
        return pa.table({"cluster": pa.array([], pa.int64()), "term": pa.array([], pa.string()),
                         "score": pa.array([], pa.float64())})
    summed = terms.group_by(["cluster", "term"]).aggregate([("docs", "sum")])
    cluster = summed.column("cluster").to_numpy()
    term = summed.column("term").to_pylist()
    spread = Counter(term)
    idf = np.log1p(np.count_nonzero(sizes) / np.array([spread[t] for t in term], dtype=np.float64))
    score = summed.column("docs_sum").to_numpy() / sizes[cluster] * idf
    return best_per_cluster(pa.table({"cluster": cluster, "term": pa.array(term, pa.string()), "score": score}), n)


def best_per_cluster(table: pa.Table, n: int) -> pa.Table:
    """The n rows of each cluster with the highest score (ties: the smaller term), by cluster."""
    cluster, score = table.column("cluster").to_numpy(), table.column("score").to_numpy()
    term = np.array(table.column("term").to_pylist(), dtype=object).astype(str)
    order = np.lexsort((term, -score, cluster))
    return table.take(pa.array(order[place_in_group(cluster[order]) < n], pa.int64()))


def top_terms(work: Path, shards: list[Shard], sizes: np.ndarray, n: int, parts: int, stage: str,
              par: dict) -> dict[int, list[str]]:
    if n == 0:
        return {}
    best = run_tasks(_top_terms_partition, [(p, work, shards, sizes, n) for p in range(parts)],
                     desc=f"{stage}: terms", **par)
    merged = best_per_cluster(pa.concat_tables(best), n)
    out: dict[int, list[str]] = {}
    for cluster, term in zip(merged.column("cluster").to_pylist(), merged.column("term").to_pylist()):
        out.setdefault(cluster, []).append(term)
    return out


def write_table(path: Path, sizes: np.ndarray, kept: np.ndarray, terms: dict[int, list[str]]) -> None:
    lines = ["cluster_id\tsize\tkept\ttop_terms"]
    lines += [f"{c}\t{sizes[c]}\t{kept[c]}\t{' '.join(terms.get(c, []))}" for c in range(len(sizes))]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")


def plot_sizes(path: Path, sizes: np.ndarray, kept: np.ndarray, cap: int) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = np.argsort(-sizes, kind="stable")
    x = np.arange(1, len(order) + 1)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.bar(x, sizes[order], width=1.0, color="#c9d6e8", label=f"before ({int(sizes.sum())} docs)")
    ax.bar(x, kept[order], width=1.0, color="#2f6db5", label=f"after ({int(kept.sum())} docs)")
    ax.axhline(cap, color="#c0392b", linestyle="--", linewidth=1, label=f"cap {cap}")
    ax.set_xlabel("cluster, largest first")
    ax.set_ylabel("documents")
    if len(sizes) and sizes.max() > 20 * max(1, np.median(sizes)):
        ax.set_yscale("log")
    ax.set_title(f"cluster sizes before and after balancing ({len(sizes)} clusters)")
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


# ---- 3. write ---------------------------------------------------------------------------------------------

def _apply_shard(shard: Shard, output_dir: Path, cap: int, stage: str, sizes: np.ndarray, parts: int,
                 compression: ShardCompression) -> dict:
    work = output_dir / "work"
    cluster = _cluster_of_docs(work, shard)
    dropped = pa.Table.from_batches([read_partition(work / "drops" / f"{p:05d}.arrow", shard.index)
                                     for p in range(parts)], schema=pa.schema([("doc", pa.int64())]))
    drop_all = np.zeros(shard.rows, dtype=bool)
    drop_all[dropped.column("doc").to_numpy() - shard.first_doc] = True
    out = ShardOutput(output_dir, shard, stage, compression)
    try:
        row = 0
        for batch in iter_shard(shard):
            out.count_input(batch)
            drop = drop_all[row:row + batch.num_rows]
            notes = batch.column("annotations").to_pylist()
            for i in np.flatnonzero(drop):
                notes[i] = add_annotations(notes[i], {"cluster_size": int(sizes[cluster[row + i]]), "cluster_cap": cap})
            row += batch.num_rows
            out.split(batch, notes, drop, REASON)
        return out.finish()
    except BaseException:
        out.abort()
        raise


def run(input_dir: Path, output_dir: Path, cfg: dict, workers: int = 1, executor: str = "local",
        ray_address: str | None = None, stage: str = STAGE,
        compression: ShardCompression = ShardCompression()) -> dict:
    with shared_workers():          # the stage's many steps share one set of spawned workers
        return _run(input_dir, output_dir, cfg, workers, executor, ray_address, stage, compression)


def _run(input_dir: Path, output_dir: Path, cfg: dict, workers: int, executor: str, ray_address: str | None,
         stage: str, compression: ShardCompression) -> dict:
    started = t0 = time.time()
    conf = load_config(cfg, BalanceConfig, "dedup.balance")
    check_config(conf)
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    work = output_dir / "work"
    shards = input_shards(input_dir)
    prepare_work(input_dir, output_dir, stage, conf)
    par = dict(workers=workers, executor=executor, ray_address=ray_address)
    steps: dict = {}
    n_docs = sum(s.rows for s in shards)

    term_parts = partition_count(n_docs, TERM_BYTES_PER_DOC, conf.memory_budget_mb)
    todo = [s for s in shards if not (work / "clusters" / f"{s.name}.arrow").is_file()]
    run_tasks(_scan_shard, [(s, work, conf, term_parts) for s in todo], desc=f"{stage}: scan", **par)
    t0 = timed(steps, "scan", t0)
    peaks = {"scan": peak_rss_mb()}

    sizes, without, no_annotation = np.zeros(0, np.int64), 0, 0
    for n, w, a in run_tasks(_count_shard, [(s, work) for s in shards], desc=f"{stage}: count", **par):
        sizes = np.pad(sizes, (0, max(0, len(n) - len(sizes))))
        sizes[:len(n)] += n
        without, no_annotation = without + w, no_annotation + a
    if n_docs and no_annotation == n_docs:
        raise UserError(f"{stage}: no document of the input has a cluster_id annotation", file=input_dir,
                        expected="semantic_dedup before cluster_balance in `stages`")
    cap = cap_of(sizes[sizes > 0], conf)
    parts = partition_count(n_docs - without, SPLIT_BYTES_PER_DOC, conf.memory_budget_mb)
    order_ranges = 0
    if conf.keep == "quality":
        order_ranges = build_order(work, shards, "clusters", conf.memory_budget_mb, stage=stage, **par)
    todo = [s for s in shards if not (work / "split" / f"{s.name}.arrow").is_file()]
    run_tasks(_split_shard, [(s, work, conf.keep, conf.seed, parts) for s in todo], desc=f"{stage}: partition",
              **par)
    todo = [p for p in range(parts) if not (work / "drops" / f"{p:05d}.arrow").is_file()]
    run_tasks(_decide_partition, [(p, work, shards, cap) for p in todo], desc=f"{stage}: decide", **par)
    kept = np.minimum(sizes, cap)               # the first `cap` of every cluster stay
    t0 = timed(steps, "decide", t0)
    peaks["decide"] = peak_rss_mb()

    write_table(output_dir / "clusters.tsv", sizes, kept,
                top_terms(work, shards, sizes, conf.top_terms, term_parts, stage, par))
    plot_sizes(output_dir / "clusters.png", sizes, kept, cap)
    t0 = timed(steps, "report", t0)

    records = run_apply(stage, output_dir, shards, _apply_shard, (cap, stage, sizes, parts),
                        compression=compression, **par)
    timed(steps, "write", t0)
    peaks["write"] = peak_rss_mb()
    over = sizes > cap
    return finish_stage(stage, output_dir, records, started, {
        "cap": cap, "keep": conf.keep, "clusters": int(np.count_nonzero(sizes)), "clusters_over_cap": int(over.sum()),
        "docs_without_cluster": without, "docs_without_annotation": no_annotation,
        "largest_cluster": {"before": int(sizes.max(initial=0)), "after": int(kept.max(initial=0))},
        "partitions": parts, "term_partitions": term_parts, "order_ranges": order_ranges,
        "table": "clusters.tsv", "plot": "clusters.png", "peak_rss_mb": peaks, **steps})
