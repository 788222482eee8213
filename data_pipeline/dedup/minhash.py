"""Near-duplicate dedup: datasketch MinHash signatures, LSH band keys on disk, exact Jaccard check,
connected components, one deterministic survivor per cluster.

Steps, each resumable (an artifact under work/ that exists is not recomputed); P partitions:
  1. signatures  per input shard, in parallel: MinHash signatures beside ids, and one 64-bit key per
                 LSH band, written once as P record batches (partition = hash of the key) of one
                 uncompressed file.
  2. order       survivor rank of every document (quality, length, id), a range-partitioned sort
                 (order.py): input order plays no part; then per input shard, in parallel, its
                 slice of the ranks is added to its band-key partitions.
  3. pairs       per band-key partition, in parallel: per band, sort (key, rank); every document in a
                 bucket is paired with the bucket's best-ranked document and with the `bucket_window`
                 documents ranked just above it (all pairs in buckets of up to bucket_window + 1), so
                 two near copies that both miss the head are still compared. The pairs (ranks and
                 documents) are written as P record batches by a hash of the pair, and the documents
                 in them (candidates) as one record batch per input shard.
  4. shingles    per input shard, in parallel: the shingle sets of its candidates only (sorted, raw,
                 for the Jaccard check; most documents are in no pair and never need theirs), the
                 text read again and shingled as in step 1.
  5. verify      per pair partition, in parallel: distinct pairs (the same pair from several bands
                 meets in one partition), exact Jaccard of the shingle sets, read per document;
                 pairs below the threshold are dropped; the partition's components (scipy) are
                 reduced to (node, smallest rank) links, with the documents of both.
  6. clusters    components of the links of all partitions, as tasks over partitions of the linked
                 documents (components.py: alternating Large-Star / Small-Star contractions, one
                 shuffle each, until a large-star phase finds every component a star on its
                 smallest rank, the survivor); then, per partition, in parallel, whole clusters with
                 their survivors' ids, numbered in survivor order and written per input shard
                 (common.write_decisions). A task holds about one partition of the links
                 (components.BYTES_PER_EDGE_ROW a row), or one whole cluster where that is larger.
  7. write       kept/excluded per input shard from its own decisions, then manifests and stats.json.
P = ceil(documents * bands * BYTES_PER_BAND_KEY / memory_budget_mb), at most MAX_PARTITIONS: a pairs
task holds its partition's (document, band, key, rank) rows, their sort order and the pairs made.
"""
from __future__ import annotations

import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
from datasketch import MinHash, MinHashLSH

from stack_common.config import Checks

from stack_common.atomic import atomic_path, read_json
from stack_common.shards import ShardCompression

from .common import (ArrowFileWriter, Shard, add_ranks, apply_cluster_decisions, doc_meta, finish_stage,
                     hash_partition, input_shards, iter_shard, load_config, pair_partition, partition_count,
                     peak_rss_mb, prepare_work, read_arrow, read_columns, read_partition, run_apply, timed,
                     unique_pair_rows, write_arrow, write_partitioned)
from .components import write_component_clusters
from .order import build_order
from .parallel import run_tasks
from .text import char_shingle_hashes, shingle_hashes
from .unionfind import linked_components

STAGE = "minhash_dedup"
REASON = "near_duplicate"
_KEY_MUL = np.uint64(0x100000001B3)
SHINGLES = ("chars", "tokens")
BYTES_PER_BAND_KEY = 112    # a pairs task: document, band, key, rank, sort order, bucket flags, the pairs made
BAND_SCHEMA = pa.schema([("doc", pa.int64()), ("band", pa.int16()), ("key", pa.uint64())])
PAIR_SCHEMA = pa.schema([("a", pa.int64()), ("b", pa.int64()), ("doc_a", pa.int64()), ("doc_b", pa.int64())])
CANDIDATE_SCHEMA = pa.schema([("doc", pa.int64())])


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
    bucket_window: int = 16             # bucket members each member is compared with (besides the head)
    memory_budget_mb: float = 1024.0    # a pairs or verify task's partition fits in this (module docstring)


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
    checks.require(conf.memory_budget_mb > 0, "dedup.minhash.memory_budget_mb: must be positive")
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


def _signature_shard(shard: Shard, work: Path, conf: MinHashConfig, bands: int, rows: int, parts: int) -> None:
    """Signatures and band keys of one shard, streamed batch by batch (band keys are held until the end
    of the shard, then written by partition; the signatures file, renamed last, marks the shard done)."""
    docs, keys = [], []
    with ArrowFileWriter(work / "signatures" / f"{shard.name}.arrow", _signature_schema(conf.num_perm)) as out:
        row = shard.first_doc
        for batch in iter_shard(shard, ["id", "text", "quality_score"]):
            sets = [shingle_set(t or "", conf) for t in batch.column("text").to_pylist()]
            sig = signatures(sets, conf.num_perm, conf.seed)
            counts = np.array([len(s) for s in sets], dtype=np.int64)
            docs.append(row + np.flatnonzero(counts > 0))
            keys.append(band_keys(sig[counts > 0], bands, rows))
            out.write({**doc_meta(batch), "n_shingles": pa.array(counts, pa.int64()),
                       "signature": pa.FixedSizeListArray.from_arrays(pa.array(sig.reshape(-1)), conf.num_perm)})
            row += batch.num_rows
        doc = np.concatenate(docs + [np.zeros(0, np.int64)])
        key = np.concatenate(keys + [np.zeros((0, bands), np.uint64)])
        write_partitioned(work / "bands" / f"{shard.name}.arrow", BAND_SCHEMA,
                          {"doc": np.repeat(doc, bands), "band": np.tile(np.arange(bands, dtype=np.int16), len(doc)),
                           "key": key.reshape(-1)}, hash_partition(key.reshape(-1), parts), parts)


def _signature_schema(num_perm: int) -> pa.Schema:
    return pa.schema([("id", pa.string()), ("quality_score", pa.float32()), ("n_chars", pa.int64()),
                      ("n_shingles", pa.int64()), ("signature", pa.list_(pa.uint32(), num_perm))])


# ---- 3. bands ----------------------------------------------------------------------------------------

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


def _pair_partition(part: int, work: Path, names: list[str], first_docs: list[int], window: int, parts: int) -> int:
    """Candidate pairs (ranks and documents) of one band-key partition, written as `parts` pair-hash
    partitions; their documents as one record batch per input shard (for the shingles step)."""
    batches = [read_partition(work / "ranked_bands" / f"{n}.arrow", part) for n in names]
    docs, band, keys, rank = (np.concatenate([b.column(name).to_numpy() for b in batches] + [np.zeros(0, dtype)])
                              for name, dtype in (("doc", np.int64), ("band", np.int16), ("key", np.uint64),
                                                  ("rank", np.int64)))
    del batches
    by_band = np.argsort(band, kind="stable")
    bounds = np.searchsorted(band[by_band], np.arange(band.max(initial=-1) + 2))
    a, b = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        if hi - lo > 1:
            rows = by_band[lo:hi]
            pa_, pb = bucket_pairs(keys[rows], rank[rows], window)
            a.append(pa_)
            b.append(pb)
    a, b = np.concatenate(a), np.concatenate(b)
    ranks, first = np.unique(rank, return_index=True)         # the partition's documents by rank
    doc_of = lambda r: docs[first[np.searchsorted(ranks, r)]]  # noqa: E731
    doc_a, doc_b = doc_of(a), doc_of(b)
    candidates = np.unique(np.concatenate([doc_a, doc_b]))
    write_partitioned(work / "candidates" / f"part-{part:05d}.arrow", CANDIDATE_SCHEMA, {"doc": candidates},
                      np.searchsorted(np.asarray(first_docs, np.int64), candidates, side="right") - 1, len(names))
    write_partitioned(work / "pairs" / f"part-{part:05d}.arrow", PAIR_SCHEMA,     # last: marks the partition done
                      {"a": a, "b": b, "doc_a": doc_a, "doc_b": doc_b}, pair_partition(a, b, parts), parts)
    return len(a)


# ---- 4. shingles -------------------------------------------------------------------------------------

def _shingle_shard(shard: Shard, work: Path, conf: MinHashConfig, parts: int) -> int:
    """Shingle sets of one shard's candidates (its documents in any candidate pair), in document order,
    raw: the verify step reads single sets with pread (ShingleStore). Returns the candidate count."""
    batches = [read_partition(work / "candidates" / f"part-{p:05d}.arrow", shard.index) for p in range(parts)]
    rows = np.unique(np.concatenate([b.column("doc").to_numpy() for b in batches] + [np.zeros(0, np.int64)]))
    rows -= shard.first_doc
    del batches
    counts = [np.zeros(1, np.int64)]
    with atomic_path(_shingle_path(work, shard.name)) as tmp, open(tmp, "wb") as values_file:
        row = 0
        for batch in iter_shard(shard, ["text"]) if len(rows) else ():
            if row > rows[-1]:                  # past the shard's last candidate: its text is not needed
                break
            lo, hi = np.searchsorted(rows, [row, row + batch.num_rows])
            if hi > lo:
                texts = batch.column("text").take(pa.array(rows[lo:hi] - row)).to_pylist()
                sets = [shingle_set(t or "", conf) for t in texts]
                counts.append(np.array([len(v) for v in sets], dtype=np.int64))
                values_file.write(b"".join(v.astype("<u4").tobytes() for v in sets))
            row += batch.num_rows
    for suffix, values in (("offsets.npy", np.cumsum(np.concatenate(counts))), ("rows.npy", rows)):
        with atomic_path(_shingle_path(work, shard.name, suffix)) as tmp, open(tmp, "wb") as fh:
            np.save(fh, values)                 # rows.npy, written last, marks the shard done
    return len(rows)


def _shingle_path(work: Path, shard_name: str, suffix: str = "u32") -> Path:
    """work/shingles/<shard>.u32: the sorted shingle hashes of the shard's candidates, little-endian
    uint32, in document order; <shard>.offsets.npy: where each one's start (candidates + 1 values);
    <shard>.rows.npy: the candidates' rows in the shard (sorted)."""
    return work / "shingles" / f"{shard_name}.{suffix}"


# ---- 5. verify ---------------------------------------------------------------------------------------

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
    """Shingle sets of candidate documents by global document index, read one set at a time (pread)
    from the per-shard raw files: a task's memory holds the sets it compares, not the files (a memory
    map of randomly accessed sets would bring most of every file's pages into the task's resident memory)."""

    MAX_OPEN = 256      # files held open; past it, the least recently read is closed

    def __init__(self, work: Path, names: list[str], first_docs: list[int]):
        self.work, self.names, self.first = work, names, np.asarray(first_docs, dtype=np.int64)
        self._open: OrderedDict[int, tuple[int, np.ndarray, np.ndarray]] = OrderedDict()

    def get(self, doc: int) -> np.ndarray:
        s = int(np.searchsorted(self.first, doc, side="right") - 1)
        if s in self._open:
            self._open.move_to_end(s)
        else:
            if len(self._open) >= self.MAX_OPEN:
                os.close(self._open.popitem(last=False)[1][0])
            load = lambda suffix: np.load(_shingle_path(self.work, self.names[s], suffix), mmap_mode="r")  # noqa: E731
            self._open[s] = (os.open(_shingle_path(self.work, self.names[s]), os.O_RDONLY), load("rows.npy"),
                             load("offsets.npy"))
        fd, rows, offsets = self._open[s]
        row = doc - self.first[s]
        i = int(np.searchsorted(rows, row))
        if i == len(rows) or rows[i] != row:
            raise KeyError(f"document {doc} (row {row} of {self.names[s]}) is in no candidate pair: no shingles stored")
        lo, hi = int(offsets[i]), int(offsets[i + 1])
        return np.frombuffer(os.pread(fd, 4 * (hi - lo), 4 * lo), dtype="<u4")

    def close(self) -> None:
        for fd, _, _ in self._open.values():
            os.close(fd)
        self._open.clear()


def _verify_partition(part: int, work: Path, names: list[str], first_docs: list[int], threshold: float,
                      parts: int) -> int:
    """Distinct candidate pairs of one pair partition, verified; writes the verified pairs and the
    partition's components as (node, root) links with their documents. Returns the verified pair count."""
    batches = [read_partition(work / "pairs" / f"part-{p:05d}.arrow", part) for p in range(parts)]
    a, b, doc_a, doc_b = (np.concatenate([x.column(c).to_numpy() for x in batches] + [np.zeros(0, np.int64)])
                          for c in PAIR_SCHEMA.names)
    del batches
    rows = unique_pair_rows(a, b)
    a, b, doc_a, doc_b = a[rows], b[rows], doc_a[rows], doc_b[rows]
    store = ShingleStore(work, names, first_docs)
    try:
        sims = np.array([jaccard_sorted(store.get(x), store.get(y)) for x, y in zip(doc_a.tolist(), doc_b.tolist())],
                        dtype=np.float32)
    finally:
        store.close()
    keep = sims >= threshold
    nodes, roots = linked_components(a[keep], b[keep])
    ranks, first = np.unique(np.concatenate([a[keep], b[keep]]), return_index=True)
    docs = np.concatenate([doc_a[keep], doc_b[keep]])[first]             # ranks == nodes
    moved = nodes != roots                      # a root's link to itself adds nothing to the components
    links = pa.table({"node": nodes[moved], "root": roots[moved], "node_doc": docs[moved],
                      "root_doc": docs[np.searchsorted(ranks, roots[moved])]})
    write_arrow(work / "links" / f"part-{part:05d}.arrow", links)
    verified = pa.table({"a": a[keep], "b": b[keep], "jaccard": sims[keep]})
    write_arrow(work / "verified" / f"part-{part:05d}.arrow",      # last: marks the partition done
                verified.replace_schema_metadata({"candidates": str(len(a))}))
    return int(keep.sum())


# ---- the stage ---------------------------------------------------------------------------------------

def run(input_dir: Path, output_dir: Path, cfg: dict, workers: int = 1, executor: str = "local",
        ray_address: str | None = None, stage: str = STAGE,
        compression: ShardCompression = ShardCompression()) -> dict:
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
    parts = partition_count(n_docs * bands, BYTES_PER_BAND_KEY, conf.memory_budget_mb)
    par = dict(workers=workers, executor=executor, ray_address=ray_address)
    steps: dict = {}
    peaks: dict = {}

    todo = [s for s in shards if not (work / "signatures" / f"{s.name}.arrow").is_file()]
    run_tasks(_signature_shard, [(s, work, conf, bands, rows, parts) for s in todo],
              desc=f"{stage}: signatures", **par)
    t0 = timed(steps, "signatures", t0)

    order_ranges = build_order(work, shards, "signatures", conf.memory_budget_mb, stage=stage, **par)
    t0 = timed(steps, "order", t0)
    peaks["order"] = peak_rss_mb()

    todo = [s for s in shards if not (work / "ranked_bands" / f"{s.name}.arrow").is_file()]
    run_tasks(add_ranks, [(work / "bands" / f"{s.name}.arrow", work / "ranked_bands" / f"{s.name}.arrow", work, s)
                          for s in todo], desc=f"{stage}: rank", **par)
    t0 = timed(steps, "rank", t0)

    todo = [p for p in range(parts) if not (work / "pairs" / f"part-{p:05d}.arrow").is_file()]
    run_tasks(_pair_partition, [(p, work, names, firsts, conf.bucket_window, parts) for p in todo],
              desc=f"{stage}: pairs", **par)
    t0 = timed(steps, "pairs", t0)
    peaks["pairs"] = peak_rss_mb()

    todo = [s for s in shards if not _shingle_path(work, s.name, "rows.npy").is_file()]
    run_tasks(_shingle_shard, [(s, work, conf, parts) for s in todo], desc=f"{stage}: shingles", **par)
    t0 = timed(steps, "shingles", t0)

    todo = [p for p in range(parts) if not (work / "verified" / f"part-{p:05d}.arrow").is_file()]
    run_tasks(_verify_partition, [(p, work, names, firsts, conf.threshold, parts) for p in todo],
              desc=f"{stage}: verify", **par)
    t0 = timed(steps, "verify", t0)
    peaks["verify"] = peak_rss_mb()

    components = write_component_clusters(work, shards, [work / "links" / f"part-{p:05d}.arrow" for p in range(parts)],
                                          work / "signatures", parts, conf.memory_budget_mb, stage, **par)
    t0 = timed(steps, "clusters", t0)
    peaks["clusters"] = peak_rss_mb()

    records = run_apply(stage, output_dir, shards, apply_cluster_decisions, (stage, REASON),
                        compression=compression, **par)
    timed(steps, "write", t0)
    peaks["write"] = peak_rss_mb()
    candidates = verified = docs_without_shingles = candidate_docs = 0
    for n in names:
        n_shingles = read_columns(work / "signatures" / f"{n}.arrow", ["n_shingles"]).column("n_shingles")
        docs_without_shingles += int((n_shingles.to_numpy() == 0).sum())
        candidate_docs += len(np.load(_shingle_path(work, n, "rows.npy"), mmap_mode="r"))
    for p in range(parts):
        table = read_arrow(work / "verified" / f"part-{p:05d}.arrow")
        candidates += int(table.schema.metadata[b"candidates"])
        verified += len(table)
    return finish_stage(stage, output_dir, records, started, {
        "threshold": conf.threshold, "num_perm": conf.num_perm, "shingle": conf.shingle, "ngram": conf.ngram,
        "bands": bands, "rows": rows, "partitions": parts, "order_ranges": order_ranges,
        "component_partitions": components["partitions"], "component_rounds": components["rounds"],
        "candidate_pairs": candidates, "candidate_docs": candidate_docs, "verified_pairs": verified,
        "clusters": read_json(work / "decisions.json")["clusters"],
        "docs_without_shingles": docs_without_shingles, "step_seconds": steps.get("step_seconds", {}),
        "peak_rss_mb": peaks})
