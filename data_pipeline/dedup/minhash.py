"""Near-duplicate dedup: datasketch MinHash signatures, LSH band keys on disk, exact Jaccard check,
union-find clusters, one deterministic survivor per cluster.

Steps, each resumable (an artifact under work/ that exists is not recomputed):
  1. signatures  per input shard, in parallel: shingle hashes (sorted, for the Jaccard check),
                 MinHash signatures beside ids, and one 64-bit key per LSH band.
  2. order       survivor rank of every document (quality, length, id): input order plays no part.
  3. bands       per band, in parallel: sort (key, rank); every document in a bucket is paired with
                 the bucket's best-ranked document and with the `bucket_window` documents ranked just
                 above it (all pairs in buckets of up to bucket_window + 1), so two near copies that
                 both miss the head are still compared. Memory: one band of keys at a time.
  4. verify      per chunk of candidate pairs, in parallel: exact Jaccard of the shingle sets;
                 pairs below the threshold are dropped.
  5. clusters    union-find over verified pairs; the root (smallest rank) survives.
  6. write       kept/excluded per input shard, then manifests and stats.json.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
from datasketch import MinHash, MinHashLSH

from stack_common.config import Checks

from .common import (ArrowFileWriter, Shard, apply_cluster_decisions, cluster_decisions, doc_meta, finish_stage,
                     input_shards, iter_shard, load_config, prepare_work, read_arrow, run_apply, survivor_rank,
                     timed, write_arrow)
from .parallel import run_tasks
from .text import char_shingle_hashes, shingle_hashes
from .unionfind import component_roots

STAGE = "minhash_dedup"
REASON = "near_duplicate"
_KEY_MUL = np.uint64(0x100000001B3)
SHINGLES = ("chars", "tokens")


@dataclass
class MinHashConfig:
    num_perm: int = 128
    # chars: character n-grams of the text with width, case and whitespace folded (text.shingle_codes);
    # tokens: n-grams of tokens (a CJK character or a word), punctuation folded: the older setting, which
    # scores Chinese and mixed zh + Latin near copies low (bench/bench_dedup.py quality).
    shingle: str = "chars"
    ngram: int = 5                      # characters (or tokens) per shingle
    threshold: float = 0.8              # Jaccard similarity at which two documents are duplicates
    seed: int = 1
    # LSH bands x rows: chosen by datasketch from the threshold with these (false positive,
    # false negative) weights; recall is weighted up because the exact check removes false positives
    # (0.8 -> 18 x 7: a pair at Jaccard 0.8 is a candidate with probability 0.986).
    lsh_weights: list[float] = field(default_factory=lambda: [0.01, 0.99])
    bands: int = 0                      # > 0 (with rows) overrides the choice
    rows: int = 0
    pairs_per_task: int = 200_000       # candidate pairs verified per task
    bucket_window: int = 16             # bucket members each member is compared with (besides the head)


def check_config(conf: MinHashConfig) -> None:
    checks = Checks()
    checks.require(conf.num_perm >= 2, "dedup.minhash.num_perm: must be at least 2")
    checks.require(conf.shingle in SHINGLES,
                   f"dedup.minhash.shingle: {conf.shingle!r} is not one of {', '.join(SHINGLES)}")
    checks.require(conf.ngram >= 1, "dedup.minhash.ngram: must be at least 1")
    checks.require(0.0 < conf.threshold <= 1.0, "dedup.minhash.threshold: must be in (0, 1]")
    checks.require(len(conf.lsh_weights) == 2 and abs(sum(conf.lsh_weights) - 1.0) < 1e-6,
                   "dedup.minhash.lsh_weights: two weights that sum to 1")
    checks.require((conf.bands > 0) == (conf.rows > 0), "dedup.minhash.bands/rows: set both or neither")
    checks.require(conf.bands * conf.rows <= conf.num_perm, "dedup.minhash.bands * rows: must be <= num_perm")
    checks.require(conf.pairs_per_task >= 1, "dedup.minhash.pairs_per_task: must be positive")
    checks.require(conf.bucket_window >= 1, "dedup.minhash.bucket_window: must be positive")
    checks.raise_if_any()


def lsh_params(conf: MinHashConfig) -> tuple[int, int]:
    if conf.bands > 0:
        return conf.bands, conf.rows
    lsh = MinHashLSH(threshold=conf.threshold, num_perm=conf.num_perm, weights=tuple(conf.lsh_weights))
    return lsh.b, lsh.r


def band_keys(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One 64-bit key per (document, band) from the band's `rows` signature values."""
    keys = np.zeros((len(signatures), bands), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(bands):
            key = np.full(len(signatures), np.uint64(j + 1), dtype=np.uint64)
            for value in signatures[:, j * rows:(j + 1) * rows].T.astype(np.uint64):
                key = (key ^ value) * _KEY_MUL
            keys[:, j] = key ^ (key >> np.uint64(29))
    return keys


# ---- 1. signatures ---------------------------------------------------------------------------------

def shingle_set(text: str, conf: MinHashConfig) -> np.ndarray:
    """Sorted distinct 32-bit shingle hashes of a document."""
    hashes = char_shingle_hashes if conf.shingle == "chars" else shingle_hashes
    return np.unique(hashes(text, conf.ngram))


def signatures(shingles: list[np.ndarray], num_perm: int, seed: int) -> np.ndarray:
    """datasketch MinHash of each shingle set (the shingles are already 32-bit hashes)."""
    hashed = (s.tolist() for s in shingles)
    sketches = MinHash.generator(hashed, num_perm=num_perm, seed=seed, hashfunc=int)
    return np.stack([m.hashvalues for m in sketches]) if shingles else np.zeros((0, num_perm), np.uint32)


def _signature_shard(shard: Shard, work: Path, conf: MinHashConfig, bands: int, rows: int) -> None:
    """Signatures, band keys and shingle sets of one shard, streamed batch by batch."""
    schemas = _work_schemas(conf.num_perm, bands)
    with contextlib.ExitStack() as stack:
        # Shingles and bands uncompressed: later steps memory-map single columns and rows.
        out = {name: stack.enter_context(ArrowFileWriter(work / name / f"{shard.name}.arrow", schemas[name],
                                                         compression=None if name != "signatures" else "zstd"))
               for name in ("signatures", "bands", "shingles")}
        row = shard.first_doc
        for batch in iter_shard(shard, ["id", "text", "quality_score"]):
            sets = [shingle_set(t or "", conf) for t in batch.column("text").to_pylist()]
            sig = signatures(sets, conf.num_perm, conf.seed)
            has = np.array([len(s) > 0 for s in sets], dtype=bool)
            offsets = np.zeros(len(sets) + 1, dtype=np.int64)
            np.cumsum([len(s) for s in sets], out=offsets[1:])
            values = np.concatenate(sets) if sets else np.zeros(0, np.uint32)
            out["shingles"].write({"shingles": pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(values))})
            keys = band_keys(sig[has], bands, rows)
            out["bands"].write({"doc": row + np.flatnonzero(has), **{f"band_{j}": keys[:, j] for j in range(bands)}})
            out["signatures"].write({**doc_meta(batch), "n_shingles": pa.array([len(s) for s in sets], pa.int64()),
                                     "signature": pa.FixedSizeListArray.from_arrays(pa.array(sig.reshape(-1)),
                                                                                    conf.num_perm)})
            row += batch.num_rows
        # Leaving the block renames the files in reverse order of opening: the signatures file comes
        # last and marks the shard done.


def _work_schemas(num_perm: int, bands: int) -> dict[str, pa.Schema]:
    return {"shingles": pa.schema([("shingles", pa.large_list(pa.uint32()))]),
            "bands": pa.schema([("doc", pa.int64())] + [(f"band_{j}", pa.uint64()) for j in range(bands)]),
            "signatures": pa.schema([("id", pa.string()), ("quality_score", pa.float32()), ("n_chars", pa.int64()),
                                     ("n_shingles", pa.int64()),
                                     ("signature", pa.list_(pa.uint32(), num_perm))])}


# ---- 3. bands ----------------------------------------------------------------------------------------

def _mapped(path: Path) -> pa.Table:
    return pa.ipc.open_file(pa.memory_map(str(path))).read_all()


def bucket_pairs(keys: np.ndarray, ranks: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Candidate pairs (a, b), rank a < b, of documents sharing a key: each member with its bucket's
    best-ranked document and with the `window` members ranked just above it.

    Pairing with the head alone misses B ~ C when neither passes the check against head A; buckets of
    up to window + 1 documents therefore get all their pairs, larger ones a sliding window (bounded
    memory). Sorted by (key, rank), so the pairs do not depend on input order.
    """
    order = np.lexsort((ranks, keys))
    keys, ranks = keys[order], ranks[order]
    pos = np.arange(len(keys))
    new_bucket = np.ones(len(keys), dtype=bool)
    new_bucket[1:] = keys[1:] != keys[:-1]
    head = np.maximum.accumulate(np.where(new_bucket, pos, 0))
    member = ~new_bucket
    a, b = [ranks[head[member]]], [ranks[member]]
    for d in range(1, window + 1):
        near = pos[d:] - d > head[d:]                    # same bucket, and not the head (paired above)
        if not near.any():
            break
        a.append(ranks[:-d][near])
        b.append(ranks[d:][near])
    return np.concatenate(a), np.concatenate(b)


def _band_edges(band: int, work: Path, names: list[str], window: int) -> int:
    rank = read_arrow(work / "order.arrow").column("rank").to_numpy()
    tables = [_mapped(work / "bands" / f"{n}.arrow") for n in names]
    docs = np.concatenate([t.column("doc").to_numpy() for t in tables])
    keys = np.concatenate([t.column(f"band_{band}").to_numpy() for t in tables])
    del tables
    a, b = bucket_pairs(keys, rank[docs], window)
    edges = pa.table({"a": a, "b": b})
    write_arrow(work / "edges" / f"band-{band:03d}.arrow", edges)
    return len(edges)


# ---- 4. verify ---------------------------------------------------------------------------------------

def jaccard_sorted(a: np.ndarray, b: np.ndarray) -> float:
    """Exact Jaccard similarity of two sorted arrays of distinct values."""
    if len(a) == 0 or len(b) == 0:
        return 0.0
    if len(a) > len(b):
        a, b = b, a
    pos = np.minimum(np.searchsorted(b, a), len(b) - 1)
    inter = int(np.count_nonzero(b[pos] == a))
    return inter / (len(a) + len(b) - inter)


class ShingleStore:
    """Shingle sets by global document index, memory-mapped from the per-shard files."""

    def __init__(self, work: Path, names: list[str], first_docs: list[int]):
        self.work, self.names, self.first = work, names, np.asarray(first_docs, dtype=np.int64)
        self._open: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def get(self, doc: int) -> np.ndarray:
        s = int(np.searchsorted(self.first, doc, side="right") - 1)
        if s not in self._open:
            column = _mapped(self.work / "shingles" / f"{self.names[s]}.arrow").column("shingles").combine_chunks()
            self._open[s] = (column.offsets.to_numpy(), column.values.to_numpy())
        offsets, values = self._open[s]
        i = doc - self.first[s]
        return values[offsets[i]:offsets[i + 1]]


def _verify_chunk(index: int, work: Path, names: list[str], first_docs: list[int], threshold: float) -> int:
    pairs = read_arrow(work / "candidates" / f"chunk-{index:05d}.arrow")
    by_rank = np.argsort(read_arrow(work / "order.arrow").column("rank").to_numpy())
    store = ShingleStore(work, names, first_docs)
    a, b = pairs.column("a").to_numpy(), pairs.column("b").to_numpy()
    sims = np.array([jaccard_sorted(store.get(int(by_rank[x])), store.get(int(by_rank[y])))
                     for x, y in zip(a, b)], dtype=np.float32)
    keep = sims >= threshold
    write_arrow(work / "verified" / f"chunk-{index:05d}.arrow",
                pa.table({"a": a[keep], "b": b[keep], "jaccard": sims[keep]}))
    return int(keep.sum())


def _candidate_chunks(work: Path, bands: int, n_docs: int, per_task: int) -> tuple[int, int]:
    """Unique candidate pairs of all bands, cut into chunk files; returns (pairs, chunks)."""
    done = work / "candidates" / "done.arrow"
    if done.is_file():
        t = read_arrow(done)
        return t.column("pairs")[0].as_py(), t.column("chunks")[0].as_py()
    edges = [read_arrow(work / "edges" / f"band-{j:03d}.arrow") for j in range(bands)]
    a = np.concatenate([e.column("a").to_numpy() for e in edges]) if edges else np.zeros(0, np.int64)
    b = np.concatenate([e.column("b").to_numpy() for e in edges]) if edges else np.zeros(0, np.int64)
    del edges
    pairs = np.unique(a.astype(np.int64) * n_docs + b)
    chunks = max(1, -(-len(pairs) // per_task))
    for i in range(chunks):
        part = pairs[i * per_task:(i + 1) * per_task]
        write_arrow(work / "candidates" / f"chunk-{i:05d}.arrow", pa.table({"a": part // n_docs, "b": part % n_docs}))
    write_arrow(done, pa.table({"pairs": [len(pairs)], "chunks": [chunks]}))
    return len(pairs), chunks


# ---- the stage ---------------------------------------------------------------------------------------

def run(input_dir: Path, output_dir: Path, cfg: dict, workers: int = 1, executor: str = "local",
        ray_address: str | None = None, stage: str = STAGE) -> dict:
    started = t0 = time.time()
    conf = load_config(cfg, MinHashConfig, "dedup.minhash")
    check_config(conf)
    bands, rows = lsh_params(conf)
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    work = output_dir / "work"
    shards = input_shards(input_dir)
    prepare_work(input_dir, output_dir, stage, conf)
    names, firsts = [s.name for s in shards], [s.first_doc for s in shards]
    n_docs = sum(s.rows for s in shards)
    par = dict(workers=workers, executor=executor, ray_address=ray_address)
    steps: dict = {}

    todo = [s for s in shards if not (work / "signatures" / f"{s.name}.arrow").is_file()]
    run_tasks(_signature_shard, [(s, work, conf, bands, rows) for s in todo], desc=f"{stage}: signatures", **par)
    t0 = timed(steps, "signatures", t0)

    meta = pa.concat_tables([read_arrow(work / "signatures" / f"{n}.arrow").drop_columns(["signature"])
                             for n in names])
    if not (work / "order.arrow").is_file():
        write_arrow(work / "order.arrow", pa.table({"rank": survivor_rank(meta)}))
    rank = read_arrow(work / "order.arrow").column("rank").to_numpy()

    todo = [j for j in range(bands) if not (work / "edges" / f"band-{j:03d}.arrow").is_file()]
    run_tasks(_band_edges, [(j, work, names, conf.bucket_window) for j in todo], desc=f"{stage}: bands", **par)
    t0 = timed(steps, "bands", t0)

    candidates, chunks = _candidate_chunks(work, bands, n_docs, conf.pairs_per_task)
    todo = [i for i in range(chunks) if not (work / "verified" / f"chunk-{i:05d}.arrow").is_file()]
    run_tasks(_verify_chunk, [(i, work, names, firsts, conf.threshold) for i in todo],
              desc=f"{stage}: verify", **par)
    t0 = timed(steps, "verify", t0)

    decisions = work / "decisions.arrow"
    verified = pa.concat_tables([read_arrow(work / "verified" / f"chunk-{i:05d}.arrow") for i in range(chunks)])
    if not decisions.is_file():
        roots = component_roots(n_docs, verified.column("a").to_numpy(), verified.column("b").to_numpy())
        write_arrow(decisions, cluster_decisions(meta, rank, roots))
    t0 = timed(steps, "clusters", t0)

    records = run_apply(stage, output_dir, shards, apply_cluster_decisions, (str(decisions), stage, REASON), **par)
    timed(steps, "write", t0)
    table = read_arrow(decisions)
    clusters = len(np.unique(table.column("cluster_id").to_numpy())) if len(table) else 0
    n_shingles = meta.column("n_shingles").to_numpy()
    return finish_stage(stage, output_dir, records, started, {
        "threshold": conf.threshold, "num_perm": conf.num_perm, "shingle": conf.shingle, "ngram": conf.ngram,
        "bands": bands, "rows": rows,
        "candidate_pairs": candidates, "verified_pairs": len(verified), "clusters": clusters,
        "docs_without_shingles": int((n_shingles == 0).sum()), "step_seconds": steps.get("step_seconds", {})})
