"""Cluster balancing (the Baichuan 2 report's "data frequency"): over-represented topics are
downsampled. Every cluster of `semantic_dedup` (annotation `cluster_id`) keeps at most a cap of
documents: `max_per_cluster`, or `cap_factor` x the median cluster size. Which documents stay:
the best in survivor order (highest quality_score, longest, smallest id), or a seeded random
sample (`keep: random`). Documents without a cluster (cluster_id -1 or none) all stay; an input
where no document has a cluster_id is refused (semantic_dedup did not run before).

Steps, each resumable: per shard, in parallel, cluster ids and the terms of each cluster's
documents -> caps and decisions -> `clusters.tsv` (cluster, size, kept, top terms) and
`clusters.png` (cluster sizes before and after) in the stage directory -> kept/excluded per shard.
"""
from __future__ import annotations

import hashlib
import json
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from stack_common.atomic import atomic_path
from stack_common.config import Checks
from stack_common.errors import UserError

from .common import (ShardOutput, Shard, add_annotations, doc_meta, finish_stage, input_shards, iter_shard,
                     load_config, prepare_work, read_arrow, run_apply, survivor_rank, timed, write_arrow)
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


def check_config(conf: BalanceConfig) -> None:
    checks = Checks()
    checks.require(conf.max_per_cluster >= 0, "dedup.balance.max_per_cluster: 0 (from cap_factor) or positive")
    checks.require(conf.cap_factor > 0, "dedup.balance.cap_factor: must be positive")
    checks.require(conf.keep in KEEP, f"dedup.balance.keep: {conf.keep!r} is not one of {', '.join(KEEP)}")
    checks.require(conf.top_terms >= 0, "dedup.balance.top_terms: must be >= 0")
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

def _scan_shard(shard: Shard, work: Path, conf: BalanceConfig) -> None:
    metas, clusters, terms = [], [], Counter()
    for batch in iter_shard(shard, ["id", "text", "quality_score", "annotations"]):
        ids = [cluster_of(a) for a in batch.column("annotations").to_pylist()]
        for cluster, text in zip(ids, batch.column("text").to_pylist()):
            if cluster >= 0 and conf.top_terms:
                terms.update((cluster, t) for t in doc_terms((text or "")[:conf.terms_chars]))
        clusters.extend(ids)
        metas.append(pa.table(doc_meta(batch)))
    keys = sorted(terms)
    write_arrow(work / "terms" / f"{shard.name}.arrow", pa.table({
        "cluster": pa.array([c for c, _ in keys], pa.int64()), "term": pa.array([t for _, t in keys], pa.string()),
        "docs": pa.array([terms[k] for k in keys], pa.int64())}))
    meta = pa.concat_tables(metas) if metas else pa.table({"id": pa.array([], pa.string()),
                                                           "quality_score": pa.array([], pa.float32()),
                                                           "n_chars": pa.array([], pa.int64())})
    write_arrow(work / "clusters" / f"{shard.name}.arrow",
                meta.append_column("cluster", pa.array(clusters, pa.int64())))


# ---- 2. decisions ---------------------------------------------------------------------------------------

def keep_order(meta: pa.Table, keep: str, seed: int) -> np.ndarray:
    """Rank of each document inside its cluster: 0 stays first."""
    if keep == "quality":
        return survivor_rank(meta)
    keys = [int.from_bytes(hashlib.blake2b(f"{seed}\0{i}".encode(), digest_size=8).digest(), "little")
            for i in meta.column("id").to_pylist()]
    order = np.lexsort((np.arange(len(keys)), np.array(keys, dtype=np.uint64)))
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    return rank


def cap_of(sizes: np.ndarray, conf: BalanceConfig) -> int:
    if conf.max_per_cluster:
        return conf.max_per_cluster
    return max(1, int(np.ceil(conf.cap_factor * np.median(sizes)))) if len(sizes) else 1


def decide(cluster: np.ndarray, rank: np.ndarray, cap: int) -> np.ndarray:
    """drop[doc]: True for documents past the cap of their cluster (in keep order)."""
    drop = np.zeros(len(cluster), dtype=bool)
    inside = np.flatnonzero(cluster >= 0)
    order = inside[np.lexsort((rank[inside], cluster[inside]))]
    if len(order):
        starts = np.flatnonzero(np.concatenate([[True], cluster[order][1:] != cluster[order][:-1]]))
        position = np.arange(len(order)) - np.repeat(starts, np.diff(np.append(starts, len(order))))
        drop[order[position >= cap]] = True
    return drop


def top_terms(terms: pa.Table, sizes: np.ndarray, n: int) -> dict[int, list[str]]:
    """Per cluster, the terms with the highest class-based TF-IDF: share of the cluster's documents
    holding the term x log(1 + clusters / clusters holding it)."""
    if n == 0 or len(terms) == 0:
        return {}
    summed = terms.group_by(["cluster", "term"]).aggregate([("docs", "sum")])
    cluster = summed.column("cluster").to_numpy()
    term = summed.column("term").to_pylist()
    docs = summed.column("docs_sum").to_numpy()
    spread = Counter(term)
    idf = np.log1p(np.count_nonzero(sizes) / np.array([spread[t] for t in term], dtype=np.float64))
    score = docs / sizes[cluster] * idf
    out: dict[int, list[str]] = {}
    for i in np.lexsort((np.array(term, dtype=object).astype(str), -score, cluster)):
        picked = out.setdefault(int(cluster[i]), [])
        if len(picked) < n:
            picked.append(term[i])
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

def _apply_shard(shard: Shard, output_dir: Path, cap: int, stage: str) -> dict:
    decisions = read_arrow(output_dir / "work" / "decisions.arrow").slice(shard.first_doc, shard.rows)
    drop_all = decisions.column("drop").to_numpy(zero_copy_only=False)
    size_all = decisions.column("cluster_size").to_numpy()
    out = ShardOutput(output_dir, shard, stage)
    try:
        row = 0
        for batch in iter_shard(shard):
            out.count_input(batch)
            drop = drop_all[row:row + batch.num_rows]
            notes = batch.column("annotations").to_pylist()
            for i in np.flatnonzero(drop):
                notes[i] = add_annotations(notes[i], {"cluster_size": int(size_all[row + i]), "cluster_cap": cap})
            row += batch.num_rows
            out.split(batch, notes, drop, REASON)
        return out.finish()
    except BaseException:
        out.abort()
        raise


def run(input_dir: Path, output_dir: Path, cfg: dict, workers: int = 1, executor: str = "local",
        ray_address: str | None = None, stage: str = STAGE) -> dict:
    started = t0 = time.time()
    conf = load_config(cfg, BalanceConfig, "dedup.balance")
    check_config(conf)
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    work = output_dir / "work"
    shards = input_shards(input_dir)
    prepare_work(input_dir, output_dir, stage, conf)
    par = dict(workers=workers, executor=executor, ray_address=ray_address)
    steps: dict = {}

    todo = [s for s in shards if not (work / "clusters" / f"{s.name}.arrow").is_file()]
    run_tasks(_scan_shard, [(s, work, conf) for s in todo], desc=f"{stage}: scan", **par)
    t0 = timed(steps, "scan", t0)

    meta = pa.concat_tables([read_arrow(work / "clusters" / f"{s.name}.arrow") for s in shards])
    cluster = meta.column("cluster").to_numpy()
    if len(cluster) and (cluster == NO_ANNOTATION).all():
        raise UserError(f"{stage}: no document of the input has a cluster_id annotation", file=input_dir,
                        expected="semantic_dedup before cluster_balance in `stages`")
    sizes = np.bincount(cluster[cluster >= 0]) if (cluster >= 0).any() else np.zeros(0, np.int64)
    cap = cap_of(sizes[sizes > 0], conf)
    if not (work / "decisions.arrow").is_file():
        drop = decide(cluster, keep_order(meta.drop_columns(["cluster"]), conf.keep, conf.seed), cap)
        size_of = np.where(cluster >= 0, sizes[np.maximum(cluster, 0)] if len(sizes) else 0, 0)
        write_arrow(work / "decisions.arrow", pa.table({"drop": pa.array(drop), "cluster_size": pa.array(size_of)}))
    drop = read_arrow(work / "decisions.arrow").column("drop").to_numpy(zero_copy_only=False)
    kept = np.bincount(cluster[(cluster >= 0) & ~drop], minlength=len(sizes))
    t0 = timed(steps, "decide", t0)

    terms = pa.concat_tables([read_arrow(work / "terms" / f"{s.name}.arrow") for s in shards])
    write_table(output_dir / "clusters.tsv", sizes, kept, top_terms(terms, sizes, conf.top_terms))
    plot_sizes(output_dir / "clusters.png", sizes, kept, cap)
    t0 = timed(steps, "report", t0)

    records = run_apply(stage, output_dir, shards, _apply_shard, (cap, stage), **par)
    timed(steps, "write", t0)
    over = sizes > cap
    return finish_stage(stage, output_dir, records, started, {
        "cap": cap, "keep": conf.keep, "clusters": int(np.count_nonzero(sizes)), "clusters_over_cap": int(over.sum()),
        "docs_without_cluster": int((cluster < 0).sum()),
        "docs_without_annotation": int((cluster == NO_ANNOTATION).sum()),
        "largest_cluster": {"before": int(sizes.max(initial=0)), "after": int(kept.max(initial=0))},
        "table": "clusters.tsv", "plot": "clusters.png", **steps})
