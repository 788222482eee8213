"""Semantic dedup (SemDeDup, as in NeMo-Curator) with embeddings trained on the corpus itself.

Steps, each resumable (an artifact under work/ that exists is not recomputed):
  1. model     TF-IDF of hashed character n-grams (no word segmenter: the same for Chinese and
               English) and a truncated SVD (scikit-learn), fitted on up to `fit_docs` documents
               spread evenly over the input. Nothing is downloaded: the model is the corpus's own.
  2. embed     per input shard, in parallel: the first `max_chars` characters of each document ->
               its TF-IDF row (all its n-grams; work/tfidf, memory-mapped later) and a unit-length
               embedding. A text with no n-gram of the SVD vocabulary has no embedding.
  3. cluster   the survivor order (order.py: highest quality_score, longest, smallest id) as range
               tasks; spherical k-means (faiss, seeded, one thread) trained on up to `kmeans_docs`
               embeddings evenly spread over those the input has; each document goes to its nearest
               centroid in a task per shard. Cluster ids number clusters by size (largest first),
               from per-shard counts summed in the driver (one number per cluster).
  4. dedup     clustered documents written by cluster partition (cluster id % P, P from
               `memory_budget_mb`), one task per partition: per cluster, documents in survivor order;
               a document whose cosine similarity (of TF-IDF rows, memory-mapped from work/tfidf, or
               of embeddings with `compare: embedding`) to an already kept one is above `threshold`
               is removed as a duplicate of the most similar kept one. Duplicates are written by input
               shard (work/dups/<partition>.arrow, record batch = shard).
  5. write     every kept document gets `cluster_id` and `cluster_distance` (1 - cosine to its
               centroid; cluster_id -1: no embedding) in its annotations; removed ones also
               `duplicate_of` and `similarity`. A shard task reads only its own assignments and its
               record batch of each partition's duplicates.
No step holds the corpus: the driver holds the k-means sample (kmeans_docs x dim floats) and one
number per cluster. The output does not depend on the number of workers or on `memory_budget_mb`:
a cluster is deduplicated whole inside one partition, in survivor order. With at most `kmeans_docs`
documents with an embedding, k-means sees every one of them (as before partitioning); a larger
input trains k-means on the evenly spread sample and assigns every document to those centroids.
"""
from __future__ import annotations

import os
import pickle
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from stack_common.atomic import atomic_path, atomic_write_json, read_json
from stack_common.config import Checks
from stack_common.logging import get_logger
from stack_common.shards import ShardCompression
from stack_common.tasks import shared_workers

from .common import (ShardOutput, Shard, add_annotations, doc_meta, finish_stage, input_shards, iter_shard,
                     load_config, partition_count, peak_rss_mb, prepare_work, read_arrow, read_columns, read_order,
                     read_partition, run_apply, timed, write_arrow, write_partitioned)
from .order import build_order
from .parallel import run_tasks
from .text import char_ngram_hashes

STAGE = "semantic_dedup"
REASON = "semantic_duplicate"
COMPARE = ("tfidf", "embedding")
log = get_logger("data_pipeline.dedup.semantic")


class TooLittleText(Exception):
    """The input has too few documents or shared n-grams to fit the embedding."""


@dataclass
class SemanticConfig:
    dim: int = 128                  # embedding size (SVD components); smaller for tiny corpora
    ngram_min: int = 2              # character n-grams of the TF-IDF (text.shingle_codes: no word segmenter)
    ngram_max: int = 4
    max_features: int = 30_000      # SVD input: the n-grams found in most fitted documents
    max_chars: int = 10_000         # characters of a document embedded (its start)
    fit_docs: int = 5_000           # documents the idf and SVD are fitted on, evenly spread over the input
    n_clusters: int = 0             # k-means clusters; 0: sqrt(documents with an embedding)
    kmeans_iter: int = 20
    # What two documents of a cluster are compared by: `tfidf`, the cosine of their TF-IDF vectors,
    # or `embedding`, the cosine of the dense embeddings (the
    # SemDeDup paper's measure; with an embedding fitted on the corpus it scores documents of one
    # genre alike, see the data_pipeline README).
    compare: str = "tfidf"
    threshold: float = 0.85         # similarity to a kept document above which a document is removed
    seed: int = 0
    kmeans_docs: int = 100_000      # embeddings k-means is trained on, evenly spread over the input
    memory_budget_mb: float = 1024.0  # a dedup task's partition of clusters (and an order range) fits in this


def check_config(conf: SemanticConfig) -> None:
    checks = Checks()
    checks.require(conf.dim >= 2, "dedup.semantic.dim: must be at least 2")
    checks.require(1 <= conf.ngram_min <= conf.ngram_max, "dedup.semantic.ngram_min/ngram_max: 1 <= min <= max")
    checks.require(conf.max_features >= conf.dim, "dedup.semantic.max_features: must be at least dim")
    checks.require(conf.max_chars >= 1, "dedup.semantic.max_chars: must be positive")
    checks.require(conf.fit_docs >= 2, "dedup.semantic.fit_docs: must be at least 2")
    checks.require(conf.n_clusters >= 0, "dedup.semantic.n_clusters: 0 (automatic) or a positive number")
    checks.require(conf.kmeans_iter >= 1, "dedup.semantic.kmeans_iter: must be positive")
    checks.require(conf.kmeans_docs >= 2, "dedup.semantic.kmeans_docs: must be at least 2")
    checks.require(conf.memory_budget_mb > 0, "dedup.semantic.memory_budget_mb: must be positive")
    checks.require(0.0 < conf.threshold <= 1.0, "dedup.semantic.threshold: cosine similarity in (0, 1]")
    checks.require(conf.compare in COMPARE,
                   f"dedup.semantic.compare: {conf.compare!r} is not one of {', '.join(COMPARE)}")
    checks.raise_if_any()


# ---- 1. model ------------------------------------------------------------------------------------------

def fit_sample(shards: list[Shard], fit_docs: int, max_chars: int) -> list[str]:
    """Texts of up to `fit_docs` documents at evenly spaced positions of the input."""
    n = sum(s.rows for s in shards)
    wanted = np.unique(np.linspace(0, n - 1, min(n, fit_docs)).astype(np.int64)) if n else np.zeros(0, np.int64)
    texts = []
    for shard in shards:
        mine = wanted[(wanted >= shard.first_doc) & (wanted < shard.first_doc + shard.rows)] - shard.first_doc
        if len(mine) == 0:
            continue
        row = 0
        for batch in iter_shard(shard, ["text"]):
            local = mine[(mine >= row) & (mine < row + batch.num_rows)] - row
            texts.extend((t or "")[:max_chars] for t in batch.column("text").take(pa.array(local)).to_pylist())
            row += batch.num_rows
    return texts


class Embedder:
    """Character n-grams (hashed, of the `text.shingle_codes` form: width, case and whitespace folded)
    weighted (1 + log tf) x idf. A document is the unit-length vector over all its n-grams, compared
    as is (an n-gram the fitted documents lack gets the idf of a one-document n-gram, so rare text
    weighs in even when it cannot match); its part over the `max_features` n-grams found in most
    fitted documents goes through a truncated SVD to the dense, unit-length embedding."""

    def __init__(self, conf: SemanticConfig, texts: list[str]):
        from sklearn.decomposition import TruncatedSVD

        self.max_chars, self.sizes = conf.max_chars, range(conf.ngram_min, conf.ngram_max + 1)
        counts = [self._counts(t) for t in texts]
        hashes, df = np.unique(np.concatenate([h for h, _ in counts] or [np.zeros(0, np.uint32)]), return_counts=True)
        shared = np.flatnonzero(df >= min(2, len(texts)))
        self.idf_hashes = hashes[shared]                         # sorted
        self.idf = (np.log((1 + len(texts)) / (1 + df[shared])) + 1).astype(np.float32)
        self.idf_unseen = np.float32(np.log((1 + len(texts)) / 2) + 1)
        top = np.sort(shared[np.lexsort((hashes[shared], -df[shared]))][:conf.max_features])
        self.vocabulary = hashes[top]                            # sorted: column i of the SVD input
        dim = min(conf.dim, len(top) - 1, len(texts) - 1)
        if dim < 2:
            raise TooLittleText(f"{len(texts)} documents with {len(top)} shared character n-grams are too few "
                                "to fit an embedding")
        self.svd = TruncatedSVD(n_components=dim, algorithm="randomized", random_state=conf.seed)
        self.svd.fit(self._svd_input([self._weights(h, c) for h, c in counts]))

    def _counts(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        return np.unique(char_ngram_hashes(text[:self.max_chars], self.sizes), return_counts=True)

    def _weights(self, hashes: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(sorted n-gram hashes, their unit-length TF-IDF weights)."""
        pos = np.minimum(np.searchsorted(self.idf_hashes, hashes), max(0, len(self.idf_hashes) - 1))
        seen = self.idf_hashes[pos] == hashes if len(self.idf_hashes) else np.zeros(len(hashes), bool)
        weight = (1 + np.log(counts)) * np.where(seen, self.idf[pos] if len(self.idf) else 0, self.idf_unseen)
        norm = np.linalg.norm(weight)
        return hashes, (weight / norm if norm > 0 else weight).astype(np.float32)

    def _svd_input(self, rows: list[tuple[np.ndarray, np.ndarray]]):
        from scipy.sparse import csr_matrix

        cols, vals, indptr = [], [], [0]
        for hashes, weight in rows:
            pos = np.minimum(np.searchsorted(self.vocabulary, hashes), len(self.vocabulary) - 1)
            known = self.vocabulary[pos] == hashes
            cols.append(pos[known])
            vals.append(weight[known])
            indptr.append(indptr[-1] + int(known.sum()))
        return csr_matrix((np.concatenate(vals or [np.zeros(0, np.float32)]),
                           np.concatenate(cols or [np.zeros(0, np.int64)]), np.array(indptr)),
                          shape=(len(rows), len(self.vocabulary)))

    @property
    def dim(self) -> int:
        return self.svd.n_components

    def __call__(self, texts: list[str]) -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray]:
        """(per text: sorted n-gram hashes and TF-IDF weights; unit-length embeddings, zero when no
        n-gram of the text is in the SVD vocabulary)."""
        rows = [self._weights(*self._counts(t)) for t in texts]
        vectors = self.svd.transform(self._svd_input(rows)).astype(np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return rows, np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 1e-6)


def save_model(path: Path, model: Embedder) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(pickle.dumps(model))


def save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def load_model(path: Path) -> Embedder:
    return pickle.loads(path.read_bytes())   # written by this stage into its own work directory


# ---- 2. embed --------------------------------------------------------------------------------------------

def _embed_shard(shard: Shard, work: Path) -> None:
    """Embeddings beside ids (compressed), and the TF-IDF rows (uncompressed: memory-mapped later)."""
    model = load_model(work / "model.pkl")
    metas, vectors, rows = [], [], []
    for batch in iter_shard(shard, ["id", "text", "quality_score"]):
        weighted, dense = model([t or "" for t in batch.column("text").to_pylist()])
        vectors.append(dense)
        rows += weighted
        metas.append(pa.table(doc_meta(batch)))
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum([len(h) for h, _ in rows], out=offsets[1:])
    flat = [np.concatenate([r[k] for r in rows]) if rows else np.zeros(0, t)
            for k, t in ((0, np.uint32), (1, np.float32))]
    write_arrow(work / "tfidf" / f"{shard.name}.arrow", pa.table({
        "hashes": pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(flat[0], pa.uint32())),
        "weights": pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(flat[1], pa.float32()))}),
        compression=None)
    dense = np.concatenate(vectors).reshape(-1) if vectors else np.zeros(0, np.float32)
    table = pa.concat_tables(metas) if metas else pa.table(
        {"id": pa.array([], pa.string()), "quality_score": pa.array([], pa.float32()),
         "n_chars": pa.array([], pa.int64())})
    table = table.append_column("embedding", pa.FixedSizeListArray.from_arrays(pa.array(dense), model.dim))
    write_arrow(work / "embeddings" / f"{shard.name}.arrow", table)      # last: marks the shard done


class TfidfRows:
    """TF-IDF rows by global document index, each read with pread from the per-shard uncompressed Arrow
    files: a task's memory holds the rows it compares, not the files (a memory map of randomly read rows
    would bring most of every file's pages into the task's resident memory)."""

    def __init__(self, work: Path, shards: list[Shard]):
        self.first = np.array([s.first_doc for s in shards], dtype=np.int64)
        self.paths = [work / "tfidf" / f"{s.name}.arrow" for s in shards]
        self._open: dict[int, tuple[int, np.ndarray, int, int]] = {}

    def _layout(self, s: int) -> tuple[int, np.ndarray, int, int]:
        """(file descriptor, row offsets, file positions of the hashes and of the weights values)."""
        if s not in self._open:
            source = pa.memory_map(str(self.paths[s]))
            table = pa.ipc.open_file(source).read_all()        # zero-copy: reads the metadata only
            source.seek(0)
            base = source.read_buffer(1).address
            hashes, weights = (table.column(c).chunk(0) for c in ("hashes", "weights"))   # one record batch
            offsets = np.array(hashes.offsets, dtype=np.int64)
            at = [v.buffers()[1].address - base + 4 * v.offset for v in (hashes.values, weights.values)]
            del table, hashes, weights
            source.close()
            self._open[s] = (os.open(self.paths[s], os.O_RDONLY), offsets, *at)
        return self._open[s]

    def row(self, doc: int) -> tuple[np.ndarray, np.ndarray]:
        s = int(np.searchsorted(self.first, doc, side="right") - 1)
        fd, offsets, hashes_at, weights_at = self._layout(s)
        lo, hi = int(offsets[doc - self.first[s]]), int(offsets[doc - self.first[s] + 1])
        return (np.frombuffer(os.pread(fd, 4 * (hi - lo), hashes_at + 4 * lo), dtype="<u4"),
                np.frombuffer(os.pread(fd, 4 * (hi - lo), weights_at + 4 * lo), dtype="<f4"))

    def close(self) -> None:
        for fd, *_ in self._open.values():
            os.close(fd)
        self._open.clear()

    def rows(self, docs: np.ndarray):
        """The documents' rows as a CSR matrix over the n-grams they hold (columns numbered locally)."""
        from scipy.sparse import csr_matrix

        hashes, weights, indptr = [], [], [0]
        for doc in docs:
            h, w = self.row(int(doc))
            hashes.append(h)
            weights.append(w)
            indptr.append(indptr[-1] + len(h))
        columns, local = np.unique(np.concatenate(hashes or [np.zeros(0, np.uint32)]), return_inverse=True)
        return csr_matrix((np.concatenate(weights or [np.zeros(0, np.float32)]), local, np.array(indptr)),
                          shape=(len(docs), len(columns)))


# ---- 3. cluster, 4. dedup ------------------------------------------------------------------------------

def kmeans(vectors: np.ndarray, k: int, iters: int, seed: int) -> np.ndarray:
    """Spherical k-means centroids (faiss), on one thread so the result is the same everywhere."""
    import faiss

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        km = faiss.Kmeans(vectors.shape[1], k, niter=iters, seed=seed, spherical=True, verbose=False)
        km.train(np.ascontiguousarray(vectors))
        return km.centroids
    finally:
        faiss.omp_set_num_threads(threads)


def assign(vectors: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid (cosine) of each vector and 1 - that cosine."""
    units = centroids / np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    cluster = np.empty(len(vectors), np.int64)
    distance = np.empty(len(vectors), np.float32)
    for lo in range(0, len(vectors), 65536):
        sims = vectors[lo:lo + 65536] @ units.T
        cluster[lo:lo + 65536] = sims.argmax(axis=1)
        distance[lo:lo + 65536] = 1.0 - sims.max(axis=1)
    return cluster, distance


def renumbering(sizes: np.ndarray, best: np.ndarray) -> np.ndarray:
    """new_id[k-means cluster]: 0.. from the largest cluster down (ties: the cluster with the
    best-ranked document); -1 for an empty cluster."""
    used = np.flatnonzero(sizes)
    order = used[np.lexsort((best[used], -sizes[used]))]
    new_id = np.full(len(sizes), -1, np.int64)
    new_id[order] = np.arange(len(order))
    return new_id


def greedy_dedup(n: int, block_sims, threshold: float, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Documents 0..n-1 in survivor order: for each, the most similar earlier kept document when
    their similarity is above `threshold` (else -1), and that similarity. `block_sims(lo, hi)` gives
    the similarities of documents lo..hi-1 to documents 0..hi-1."""
    kept = np.zeros(n, dtype=bool)
    dup_of = np.full(n, -1, np.int64)
    sim_of = np.zeros(n, np.float32)
    for lo in range(0, n, block):
        hi = min(n, lo + block)
        sims = block_sims(lo, hi)
        for i in range(lo, hi):
            row = np.where(kept[:i], sims[i - lo, :i], -np.inf)
            best = int(row.argmax()) if i else -1
            if i and row[best] > threshold:
                dup_of[i], sim_of[i] = best, row[best]
            else:
                kept[i] = True
    return dup_of, sim_of


def similarities(measure: str, vectors: np.ndarray, tfidf: TfidfRows, members: np.ndarray):
    """block_sims for greedy_dedup: cosine of the embeddings, or of the TF-IDF rows."""
    if measure == "embedding":
        return lambda lo, hi: vectors[lo:hi] @ vectors[:hi].T
    rows = tfidf.rows(members)
    return lambda lo, hi: (rows[lo:hi] @ rows[:hi].T).toarray()


def _embeddings(work: Path, shard: Shard) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    """(the shard's embeddings file, its vectors, which have an embedding)."""
    table = read_arrow(work / "embeddings" / f"{shard.name}.arrow")
    column = table.column("embedding").combine_chunks()
    vectors = column.values.to_numpy().reshape(len(table), column.type.list_size)
    return table, vectors, np.linalg.norm(vectors, axis=1) > 0.5


def _count_embedded(shard: Shard, work: Path) -> int:
    return int(_embeddings(work, shard)[2].sum())


def _sample_shard(shard: Shard, work: Path, picks: np.ndarray) -> np.ndarray:
    """The vectors of the shard's documents with an embedding at positions `picks` (among those)."""
    _, vectors, has = _embeddings(work, shard)
    return vectors[np.flatnonzero(has)[picks]]


def _assign_shard(shard: Shard, work: Path, centroids: np.ndarray) -> None:
    """work/assign/<shard>.arrow: each document's k-means cluster (-1: no embedding) and distance."""
    _, vectors, has = _embeddings(work, shard)
    cluster = np.full(len(has), -1, np.int64)
    distance = np.full(len(has), np.nan, np.float32)
    if has.any():
        cluster[has], distance[has] = assign(vectors[has], centroids)
    write_arrow(work / "assign" / f"{shard.name}.arrow", pa.table({"cluster": cluster, "distance": distance}))


def _cluster_counts(shard: Shard, work: Path, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per k-means cluster: the shard's documents in it and the best survivor rank among them."""
    cluster = read_columns(work / "assign" / f"{shard.name}.arrow", ["cluster"]).column("cluster").to_numpy()
    rank = read_order(work)[0][shard.first_doc:shard.first_doc + shard.rows]
    inside = cluster >= 0
    best = np.full(k, np.iinfo(np.int64).max)
    np.minimum.at(best, cluster[inside], rank[inside])
    return np.bincount(cluster[inside], minlength=k), best


SPLIT_SCHEMA = pa.schema([("doc", pa.int64()), ("rank", pa.int64()), ("cluster", pa.int64()), ("id", pa.string())])


def _split_shard(shard: Shard, work: Path, new_id: np.ndarray, parts: int) -> None:
    """The shard's documents with an embedding, by cluster partition (cluster id % parts)."""
    table, vectors, has = _embeddings(work, shard)
    rows = np.flatnonzero(has)
    cluster = new_id[read_columns(work / "assign" / f"{shard.name}.arrow", ["cluster"]).column("cluster")
                     .to_numpy()[rows]]
    rank = read_order(work)[0][shard.first_doc:shard.first_doc + shard.rows][rows]
    dim = vectors.shape[1]
    schema = SPLIT_SCHEMA.append(pa.field("embedding", pa.list_(pa.float32(), dim)))
    write_partitioned(work / "clusters" / f"split-{shard.name}.arrow", schema, {
        "doc": shard.first_doc + rows, "rank": np.asarray(rank), "cluster": cluster,
        "id": table.column("id").combine_chunks().take(pa.array(rows, pa.int64())),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors[rows].reshape(-1)), dim)},
        cluster % parts, parts)


DUP_SCHEMA = pa.schema([("doc", pa.int64()), ("duplicate_of", pa.string()), ("similarity", pa.float32())])


def _dedup_partition(part: int, work: Path, shards: list[Shard], compare: str, threshold: float) -> None:
    """Greedy dedup of every cluster of the partition; its duplicates written by input shard."""
    batches = [read_partition(work / "clusters" / f"split-{s.name}.arrow", part) for s in shards]
    table = pa.Table.from_batches(batches).combine_chunks()
    docs, rank, cluster = (table.column(c).to_numpy() for c in ("doc", "rank", "cluster"))
    column = table.column("embedding").chunk(0) if table.num_rows else None
    vectors = column.values.to_numpy().reshape(len(docs), -1) if column is not None else None
    tfidf = TfidfRows(work, shards)
    order = np.lexsort((rank, cluster))
    dup_row, similarity = np.full(len(docs), -1, np.int64), np.zeros(len(docs), np.float32)
    try:
        for members in np.split(order, np.flatnonzero(np.diff(cluster[order])) + 1) if len(order) else []:
            dup, sim = greedy_dedup(len(members), similarities(compare, vectors[members], tfidf, docs[members]),
                                    threshold)
            hit = dup >= 0
            dup_row[members[hit]] = members[dup[hit]]
            similarity[members[hit]] = sim[hit]
    finally:
        tfidf.close()
    hit = np.flatnonzero(dup_row >= 0)
    first = np.array([s.first_doc for s in shards], np.int64)
    write_partitioned(work / "dups" / f"{part:05d}.arrow", DUP_SCHEMA, {
        "doc": docs[hit], "duplicate_of": table.column("id").take(pa.array(dup_row[hit], pa.int64())),
        "similarity": similarity[hit]}, np.searchsorted(first, docs[hit], side="right") - 1, len(shards))


def split_bytes_per_doc(conf: SemanticConfig) -> int:
    """What a dedup task holds per document of its partition: the split row and the compared vector
    (dense embedding, or the TF-IDF row of up to ~3 n-grams per character, memory-mapped, plus its
    CSR copy)."""
    return 64 + 4 * conf.dim + (TFIDF_BYTES_PER_DOC if conf.compare == "tfidf" else 4 * conf.dim)


TFIDF_BYTES_PER_DOC = 16_384


def decide(work: Path, shards: list[Shard], conf: SemanticConfig, stage: str, par: dict) -> dict:
    """Steps 3 and 4 as tasks: survivor order, k-means on a sample, assignment per shard, clusters
    partitioned, greedy dedup per partition. Returns the facts for stats.json."""
    order_ranges = build_order(work, shards, "embeddings", conf.memory_budget_mb, stage=stage, **par)
    counts = np.array(run_tasks(_count_embedded, [(s, work) for s in shards], desc=f"{stage}: count", **par)
                      or [0], np.int64)
    n_valid = int(counts.sum())
    k = min(n_valid, conf.n_clusters or max(1, int(round(np.sqrt(n_valid)))))
    facts = {"k": int(k), "docs_without_embedding": sum(s.rows for s in shards) - n_valid,
             "kmeans_sample": int(min(n_valid, conf.kmeans_docs)), "order_ranges": order_ranges}
    if not (work / "centroids.npy").is_file() and n_valid:
        wanted = np.unique(np.linspace(0, n_valid - 1, min(n_valid, conf.kmeans_docs)).astype(np.int64))
        starts = np.concatenate([[0], np.cumsum(counts)])
        picks = [wanted[(wanted >= lo) & (wanted < hi)] - lo for lo, hi in zip(starts[:-1], starts[1:])]
        sample = run_tasks(_sample_shard, [(s, work, p) for s, p in zip(shards, picks) if len(p)],
                           desc=f"{stage}: k-means sample", **par)
        centroids = kmeans(np.concatenate(sample), min(k, len(wanted)), conf.kmeans_iter, conf.seed)
        save_npy(work / "centroids.npy", centroids)
    facts["peak_rss_mb"] = {"kmeans": peak_rss_mb()}
    if n_valid:
        centroids = np.load(work / "centroids.npy")
        todo = [s for s in shards if not (work / "assign" / f"{s.name}.arrow").is_file()]
        run_tasks(_assign_shard, [(s, work, centroids) for s in todo], desc=f"{stage}: assign", **par)
    else:
        centroids = np.zeros((0, 1), np.float32)
        for shard in shards:
            _assign_shard(shard, work, centroids)
    sizes, best = _summed_counts(work, shards, len(centroids), stage, par)
    new_id = renumbering(sizes, best)
    parts = partition_count(n_valid, split_bytes_per_doc(conf), conf.memory_budget_mb)
    todo = [s for s in shards if not (work / "clusters" / f"split-{s.name}.arrow").is_file()]
    run_tasks(_split_shard, [(s, work, new_id, parts) for s in todo], desc=f"{stage}: partition", **par)
    todo = [p for p in range(parts) if not (work / "dups" / f"{p:05d}.arrow").is_file()]
    run_tasks(_dedup_partition, [(p, work, shards, conf.compare, conf.threshold) for p in todo],
              desc=f"{stage}: dedup", **par)
    facts["peak_rss_mb"]["dedup"] = peak_rss_mb()
    save_npy(work / "renumber.npy", new_id)
    sizes = np.sort(sizes[sizes > 0])
    return {**facts, "clusters": len(sizes), "partitions": parts,
            "cluster_sizes": {"min": int(sizes.min()) if len(sizes) else 0,
                              "median": float(np.median(sizes)) if len(sizes) else 0.0,
                              "max": int(sizes.max()) if len(sizes) else 0}}


def _summed_counts(work: Path, shards: list[Shard], k: int, stage: str, par: dict) -> tuple[np.ndarray, np.ndarray]:
    sizes, best = np.zeros(k, np.int64), np.full(k, np.iinfo(np.int64).max)
    if k:
        for n, b in run_tasks(_cluster_counts, [(s, work, k) for s in shards], desc=f"{stage}: sizes", **par):
            sizes += n
            np.minimum(best, b, out=best)
    return sizes, best


# ---- 5. write --------------------------------------------------------------------------------------------

def _apply_shard(shard: Shard, output_dir: Path, stage: str, parts: int, compression: ShardCompression) -> dict:
    work = output_dir / "work"
    assigned = read_arrow(work / "assign" / f"{shard.name}.arrow")
    new_id = np.load(work / "renumber.npy") if parts else np.zeros(0, np.int64)
    raw = assigned.column("cluster").to_numpy()
    cluster = np.where(raw >= 0, new_id[np.maximum(raw, 0)] if len(new_id) else -1, -1).tolist()
    distance = assigned.column("distance").to_pylist()
    dups = pa.Table.from_batches([read_partition(work / "dups" / f"{p:05d}.arrow", shard.index) for p in range(parts)],
                                 schema=DUP_SCHEMA).to_pydict()
    dup_of = {d - shard.first_doc: (x, s) for d, x, s in zip(dups["doc"], dups["duplicate_of"], dups["similarity"])}
    out = ShardOutput(output_dir, shard, stage, compression)
    try:
        row = 0
        for batch in iter_shard(shard):
            out.count_input(batch)
            notes = batch.column("annotations").to_pylist()
            drop = np.zeros(batch.num_rows, dtype=bool)
            for i in range(batch.num_rows):
                j = row + i
                facts = {"cluster_id": cluster[j],
                         "cluster_distance": None if cluster[j] < 0 else round(distance[j], 5)}
                if j in dup_of:
                    drop[i] = True
                    facts.update(duplicate_of=dup_of[j][0], similarity=round(dup_of[j][1], 5), dedup_stage=stage)
                notes[i] = add_annotations(notes[i], facts)
            row += batch.num_rows
            out.split(batch, notes, drop, REASON)
        return out.finish()
    except BaseException:
        out.abort()
        raise


# ---- the stage ---------------------------------------------------------------------------------------

def run(input_dir: Path, output_dir: Path, cfg: dict, workers: int = 1, executor: str = "local",
        ray_address: str | None = None, stage: str = STAGE,
        compression: ShardCompression = ShardCompression()) -> dict:
    with shared_workers():          # the stage's many steps share one set of spawned workers
        return _run(input_dir, output_dir, cfg, workers, executor, ray_address, stage, compression)


def _run(input_dir: Path, output_dir: Path, cfg: dict, workers: int, executor: str, ray_address: str | None,
         stage: str, compression: ShardCompression) -> dict:
    started = t0 = time.time()
    conf = load_config(cfg, SemanticConfig, "dedup.semantic")
    check_config(conf)
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    work = output_dir / "work"
    shards = input_shards(input_dir)
    prepare_work(input_dir, output_dir, stage, conf)
    par = dict(workers=workers, executor=executor, ray_address=ray_address)
    steps: dict = {}
    n_docs = sum(s.rows for s in shards)

    summary = work / "decisions.json"
    if not summary.is_file():
        try:
            if not (work / "model.pkl").is_file():
                save_model(work / "model.pkl", Embedder(conf, fit_sample(shards, conf.fit_docs, conf.max_chars)))
            t0 = timed(steps, "model", t0)
            todo = [s for s in shards if not (work / "embeddings" / f"{s.name}.arrow").is_file()]
            run_tasks(_embed_shard, [(s, work) for s in todo], desc=f"{stage}: embed", **par)
            t0 = timed(steps, "embed", t0)
            model = load_model(work / "model.pkl")
            facts = {"dim": model.dim, "explained_variance": round(float(model.svd.explained_variance_ratio_.sum()), 4),
                     **decide(work, shards, conf, stage, par)}
        except TooLittleText as err:        # nothing to compare: every document passes, unclustered
            log.warning("%s: %s; every document is kept without a cluster", stage, err)
            for shard in shards:
                write_arrow(work / "assign" / f"{shard.name}.arrow", pa.table({
                    "cluster": np.full(shard.rows, -1, np.int64), "distance": np.zeros(shard.rows, np.float32)}))
            facts = {"dim": 0, "explained_variance": 0.0, "clusters": 0, "docs_without_embedding": n_docs,
                     "partitions": 0, "not_fitted": str(err)}
        atomic_write_json(summary, facts)
    t0 = timed(steps, "cluster_dedup", t0)
    extra = {"threshold": conf.threshold, **read_json(summary)}
    records = run_apply(stage, output_dir, shards, _apply_shard, (stage, extra["partitions"]),
                        compression=compression, **par)
    timed(steps, "write", t0)
    extra.setdefault("peak_rss_mb", {})["write"] = peak_rss_mb()
    return finish_stage(stage, output_dir, records, started, {**extra, **steps})
