"""What the three dedup stages share: input shards, survivor order, per-shard output, stats.

Layout of a stage's output directory:
    work/      intermediate artifacts (each written atomically; present = sub-step done); the pipeline
               removes it once stats.json is written, unless dedup.keep_work (instances.release_work)
    kept/      DOC_SCHEMA shard dir, one group of files per input shard, in input order
    excluded/  EXCLUDED_SCHEMA shard dir (stage, reason; duplicate_of/cluster_id in annotations)
    stats.json written last: its presence means the stage is complete
"""
from __future__ import annotations

import json
import math
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data_pipeline.schema import DOC_SCHEMA, EXCLUDED_SCHEMA
from stack_common.atomic import atomic_write_json, read_json
from stack_common.config import as_plain, to_dataclass
from stack_common.errors import UserError
from stack_common.shards import ArrowWriter, ShardCompression, ShardFile, ShardWriter, clean_incomplete, \
    iter_file_batches, manifest_schema, read_manifest, shard_paths, write_manifest
from stack_common.shards import read_arrow, write_arrow  # noqa: F401 (the dedup stages import them from here)

from .parallel import run_tasks

REQUIRED_COLUMNS = ("id", "text", "quality_score", "annotations")


@dataclass(frozen=True)
class Shard:
    """One input file: `first_doc` is the global index of its first document (input order)."""
    index: int
    path: Path
    name: str
    first_doc: int
    rows: int


def input_shards(input_dir: Path) -> list[Shard]:
    manifest = read_manifest(input_dir)
    schema = manifest_schema(input_dir)
    missing = [c for c in REQUIRED_COLUMNS if c not in schema.names]
    if missing:
        raise UserError(f"input shards lack column(s) {', '.join(missing)}", file=input_dir,
                        expected="data_pipeline.schema.DOC_SCHEMA")
    shards, first = [], 0
    for i, (path, entry) in enumerate(zip(shard_paths(input_dir), manifest["files"])):
        shards.append(Shard(i, path, path.stem, first, entry["rows"]))
        first += entry["rows"]
    return shards


def prepare_work(input_dir: Path, output_dir: Path, stage: str, conf) -> None:
    """Pin the work directory to this input and config, and drop temp files of a killed run.

    Resuming reuses every finished artifact, so a rerun with another input or config must not
    pick them up: that is refused with the way out.
    """
    work = output_dir / "work"
    manifest = read_manifest(input_dir)
    identity = {"stage": stage, "config": as_plain(conf),
                "input": [[f["name"], f["sha256"]] for f in manifest["files"]]}
    pin = work / "run.json"
    if pin.is_file():
        if read_json(pin) != identity:
            raise UserError(f"{stage} was started here with another input or config; remove the directory "
                            "or choose a new output to start over", file=output_dir)
    else:
        work.mkdir(parents=True, exist_ok=True)
        atomic_write_json(pin, identity)
    for sub in [work, *[d for d in work.iterdir() if d.is_dir()]]:
        clean_incomplete(sub)


def iter_shard(shard: Shard, columns=None) -> Iterator[pa.RecordBatch]:
    yield from iter_file_batches(shard.path, columns)


def load_config(cfg: dict | None, cls, where: str):
    return to_dataclass(cfg or {}, cls, where=where)


# ---- survivor order ---------------------------------------------------------------------------

def doc_meta(batch: pa.RecordBatch) -> dict[str, pa.Array]:
    """The columns that decide which copy survives: quality (null = lowest), length, id."""
    quality = batch.column("quality_score").cast(pa.float32())
    quality = pc.if_else(pc.is_nan(quality), pa.scalar(None, pa.float32()), quality)
    return {"id": batch.column("id"), "quality_score": quality,
            "n_chars": pc.fill_null(pc.utf8_length(batch.column("text")), 0).cast(pa.int64())}


def survivor_rank(meta: pa.Table) -> np.ndarray:
    """rank[doc]: 0 for the document that should survive first (highest quality, longest, smallest id)."""
    keys = [("quality_score", "descending", "at_end"), ("n_chars", "descending", "at_end"),
            ("id", "ascending", "at_end")]
    order = pc.sort_indices(meta, sort_keys=keys).to_numpy()
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order), dtype=np.int64)
    return rank


def read_order(work: Path) -> tuple[np.ndarray, np.ndarray]:
    """(rank of each document, document of each rank): memory-mapped views of work/order/ (order.py)."""
    return (np.load(work / "order" / "rank.npy", mmap_mode="r"), np.load(work / "order" / "doc.npy", mmap_mode="r"))


def column_numpy(table: pa.Table, name: str) -> np.ndarray:
    """A primitive column as numpy: a view of the memory map when the file holds one batch."""
    column = table.column(name)
    return column.chunk(0).to_numpy() if column.num_chunks == 1 else column.to_numpy()


# ---- partitions ---------------------------------------------------------------------------------------

MAX_PARTITIONS = 4096
_MIX = np.uint64(0x9E3779B97F4A7C15)


def partition_count(items: int, bytes_per_item: int, memory_budget_mb: float) -> int:
    """ceil(items * bytes_per_item / budget), between 1 and MAX_PARTITIONS: a task holds one partition."""
    need = items * bytes_per_item / (memory_budget_mb * 2 ** 20)
    return int(min(MAX_PARTITIONS, max(1, math.ceil(need))))


def hash_partition(values: np.ndarray, parts: int) -> np.ndarray:
    """Partition of each uint64 value: the high bits of a multiplicative hash, modulo `parts`."""
    with np.errstate(over="ignore"):
        mixed = values.astype(np.uint64) * _MIX
    return ((mixed >> np.uint64(32)) % np.uint64(parts)).astype(np.int64)


def pair_partition(a: np.ndarray, b: np.ndarray, parts: int) -> np.ndarray:
    """Partition of each pair (a, b) of int64 values, so equal pairs meet in one partition."""
    with np.errstate(over="ignore"):
        return hash_partition(a.astype(np.uint64) * _MIX ^ b.astype(np.uint64), parts)


def unique_pair_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Rows of the distinct pairs (a, b) of two int64 columns, in (a, b) order (no a * n + b encoding to overflow)."""
    order = np.lexsort((b, a))
    a, b = a[order], b[order]
    first = np.ones(len(a), dtype=bool)
    first[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
    return order[first]


def unique_pairs(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct pairs, sorted by (a, b)."""
    rows = unique_pair_rows(a, b)
    return a[rows], b[rows]


def write_partitioned(path: Path, schema: pa.Schema, columns: dict, part: np.ndarray, parts: int) -> None:
    """One uncompressed Arrow file whose record batch p holds the rows of partition p (input order)."""
    order = np.argsort(part, kind="stable")
    bounds = np.searchsorted(part[order], np.arange(parts + 1))
    rows = pa.array(order)
    columns = {name: (values if isinstance(values, pa.Array) else pa.array(values, schema.field(name).type)).take(rows)
               for name, values in columns.items()}
    with ArrowFileWriter(path, schema, compression=None) as out:
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            out.write({name: values.slice(lo, hi - lo) for name, values in columns.items()})


def read_partition(path: Path, part: int) -> pa.RecordBatch:
    """Record batch `part` of a write_partitioned file, memory-mapped (no copy). The file is closed on
    return (the mapping lives as long as the batch): a task holding a batch of every shard's file
    needs no descriptor per file."""
    with pa.memory_map(str(path)) as src:
        return pa.ipc.open_file(src).get_batch(part)


# ---- ranks -------------------------------------------------------------------------------------------

def add_ranks(src: Path, dst: Path, work: Path, shard: Shard) -> None:
    """dst: the write_partitioned file `src` of one shard with a `rank` column (survivor rank of `doc`),
    read from the shard's contiguous slice of work/order/rank.npy; src is removed once dst is in place.
    A per-shard task after the order step, so no partition task looks up ranks across the corpus."""
    rank = np.load(work / "order" / "rank.npy", mmap_mode="r")
    ranks = np.array(rank[shard.first_doc:shard.first_doc + shard.rows])
    with pa.memory_map(str(src)) as mapped:
        reader = pa.ipc.open_file(mapped)
        with ArrowFileWriter(dst, reader.schema.append(pa.field("rank", pa.int64())), compression=None) as out:
            for i in range(reader.num_record_batches):
                batch = reader.get_batch(i)
                out.write({**dict(zip(batch.schema.names, batch.columns)),
                           "rank": pa.array(ranks[batch.column("doc").to_numpy() - shard.first_doc], pa.int64())})
    src.unlink()


# ---- cluster decisions ---------------------------------------------------------------------------------
#
# Clusters are numbered in survivor order (by the survivor's rank), so ids do not depend on input order
# or partitioning. Without a global step over every clustered document:
#   1. each cluster task (exact: a group partition; MinHash: the merge) writes whole clusters, one
#      row per member, as record batches by range of the survivor's rank, and counts its survivors
#      per range (schema metadata);
#   2. the driver sums the counts: cluster ids of range j start at the survivors of ranges < j;
#   3. per rank range, in parallel: its clusters numbered, the rows written as record batches by input shard;
#   4. the per-shard apply reads its batch of every range file.

CLUSTER_SCHEMA = pa.schema([("doc", pa.int64()), ("root", pa.int64()), ("cluster_size", pa.int64()),
                            ("duplicate_of", pa.string())])
DECISION_SCHEMA = pa.schema([("doc", pa.int64()), ("cluster_id", pa.int64()), ("cluster_size", pa.int64()),
                             ("duplicate_of", pa.string())])


def root_range(roots: np.ndarray, n_docs: int, ranges: int) -> np.ndarray:
    """Rank range of each survivor rank: ranges of equal width over 0..n_docs-1."""
    return (np.asarray(roots, dtype=np.int64) * ranges) // max(1, n_docs)


def write_clusters(path: Path, docs: np.ndarray, roots: np.ndarray, root_docs: np.ndarray, root_ids: pa.Array,
                   n_docs: int, ranges: int) -> int:
    """Members of whole clusters (doc, survivor rank `roots`, survivor doc and id of each), as `ranges`
    record batches by survivor rank range; schema metadata `roots`: survivors per range. Returns clusters."""
    cluster_roots, cluster_of, sizes = np.unique(roots, return_inverse=True, return_counts=True)
    dup_of = pc.if_else(pa.array(root_docs == docs), pa.scalar(None, pa.string()), root_ids.cast(pa.string()))
    counts = np.bincount(root_range(cluster_roots, n_docs, ranges), minlength=ranges)
    schema = CLUSTER_SCHEMA.with_metadata({"roots": json.dumps(counts.tolist())})
    write_partitioned(path, schema, {"doc": docs, "root": roots, "cluster_size": sizes[cluster_of.ravel()],
                                     "duplicate_of": dup_of}, root_range(roots, n_docs, ranges), ranges)
    return len(cluster_roots)


def _number_range(j: int, work: Path, cluster_files: list[Path], first_id: int, first_docs: list[int]) -> None:
    """Step 3 for rank range j: its clusters get ids first_id, first_id + 1, ... in survivor order."""
    table = pa.Table.from_batches([read_partition(f, j) for f in cluster_files], schema=CLUSTER_SCHEMA)
    docs = table.column("doc").to_numpy()
    _, cluster_of = np.unique(table.column("root").to_numpy(), return_inverse=True)
    shard_of = np.searchsorted(np.asarray(first_docs, np.int64), docs, side="right") - 1
    write_partitioned(work / "decisions" / f"range-{j:05d}.arrow", DECISION_SCHEMA,
                      {"doc": docs, "cluster_id": first_id + cluster_of.ravel(),
                       "cluster_size": table.column("cluster_size").combine_chunks(),
                       "duplicate_of": table.column("duplicate_of").combine_chunks()}, shard_of, len(first_docs))


def write_decisions(work: Path, shards: list[Shard], cluster_files: list[Path], ranges: int, stage: str,
                    **par) -> int:
    """Steps 2-3 above, then work/decisions.json (last: marks the decisions done); returns clusters."""
    counts = np.zeros(ranges, np.int64)
    for f in cluster_files:
        counts += json.loads(pa.ipc.open_file(pa.memory_map(str(f))).schema.metadata[b"roots"])
    first_id = np.concatenate([[0], np.cumsum(counts)[:-1]])
    firsts = [s.first_doc for s in shards]
    todo = [j for j in range(ranges) if not (work / "decisions" / f"range-{j:05d}.arrow").is_file()]
    run_tasks(_number_range, [(j, work, cluster_files, int(first_id[j]), firsts) for j in todo],
              desc=f"{stage}: decisions", **par)
    atomic_write_json(work / "decisions.json", {"clusters": int(counts.sum()), "ranges": ranges})
    return int(counts.sum())


def read_decisions(work: Path, shard: Shard) -> pa.Table:
    """One shard's decisions (doc, cluster_id, cluster_size, duplicate_of): its batch of every range file."""
    ranges = read_json(work / "decisions.json")["ranges"]
    return pa.Table.from_batches([read_partition(work / "decisions" / f"range-{j:05d}.arrow", shard.index)
                                  for j in range(ranges)], schema=DECISION_SCHEMA)


def ids_of(meta_dir: Path, shards: list[Shard], docs: np.ndarray) -> pa.Array:
    """Ids of the sorted global document indices `docs`, reading one shard's id column at a time."""
    parts = [pa.array([], pa.string())]
    for shard in shards:
        lo, hi = np.searchsorted(docs, [shard.first_doc, shard.first_doc + shard.rows])
        if hi > lo:
            ids = read_columns(meta_dir / f"{shard.name}.arrow", ["id"]).column("id")
            parts.append(ids.take(pa.array(docs[lo:hi] - shard.first_doc)).combine_chunks())
    return pa.concat_arrays(parts)


def read_columns(path: Path, names: list[str]) -> pa.Table:
    """Only the named columns of an Arrow file (the others are not read or decompressed)."""
    with pa.memory_map(str(path)) as src:
        schema = pa.ipc.open_file(src).schema
        options = pa.ipc.IpcReadOptions(included_fields=[schema.get_field_index(n) for n in names])
        return pa.ipc.open_file(src, options=options).read_all()


def ArrowFileWriter(path: Path, schema: pa.Schema, compression: str | None = "zstd") -> ArrowWriter:
    """One Arrow IPC file written batch by batch (`write(columns)`), renamed into place when the
    block exits without an error, removed otherwise."""
    return ArrowWriter(path, schema, single_file=True, compression=compression)


def add_annotations(raw: str | None, extra: dict) -> str:
    try:
        notes = json.loads(raw) if raw else {}
    except json.JSONDecodeError:
        notes = {"unparsed_annotations": raw}
    if not isinstance(notes, dict):
        notes = {"annotations": notes}
    notes.update(extra)
    return json.dumps(notes, ensure_ascii=False)


# ---- per-shard output ----------------------------------------------------------------------------

class ShardOutput:
    """The kept and excluded files of one input shard, and a marker that says they are complete."""

    def __init__(self, output_dir: Path, shard: Shard, stage: str, compression: ShardCompression):
        self.shard, self.stage = shard, stage
        self.marker = output_dir / "work" / "apply" / f"{shard.name}.json"
        self.kept = ShardWriter(output_dir / "kept", DOC_SCHEMA, prefix=shard.name, write_manifest=False,
                                compression=compression.codec())
        self.excluded = ShardWriter(output_dir / "excluded", EXCLUDED_SCHEMA, prefix=shard.name,
                                    write_manifest=False, compression=compression.codec())
        self.stats = {"docs_in": 0, "bytes_in": 0, "docs_out": 0, "bytes_out": 0, "excluded": {}}

    def count_input(self, batch: pa.RecordBatch) -> None:
        self.stats["docs_in"] += batch.num_rows
        self.stats["bytes_in"] += _text_bytes(batch)

    def keep(self, batch: pa.RecordBatch | pa.Table) -> None:
        self.kept.write(batch)
        self.stats["docs_out"] += batch.num_rows
        self.stats["bytes_out"] += _text_bytes(batch)

    def exclude(self, batch: pa.RecordBatch | pa.Table, reason: str) -> None:
        if batch.num_rows == 0:
            return
        n = batch.num_rows
        table = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
        table = table.select(DOC_SCHEMA.names).cast(DOC_SCHEMA)
        table = table.append_column("stage", pa.array([self.stage] * n, pa.string()))
        table = table.append_column("reason", pa.array([reason] * n, pa.string()))
        self.excluded.write(table)
        self.stats["excluded"][reason] = self.stats["excluded"].get(reason, 0) + n

    def split(self, batch: pa.RecordBatch, notes: list, drop: np.ndarray, reason: str) -> None:
        """Write `batch` with its annotations replaced by `notes`: rows where `drop` is set are
        excluded with `reason`, the rest kept."""
        column = batch.schema.get_field_index("annotations")
        batch = batch.set_column(column, "annotations", pa.array(notes, pa.string()))
        self.keep(batch.filter(pa.array(~drop)))
        self.exclude(batch.filter(pa.array(drop)), reason)

    def finish(self) -> dict:
        kept = [f.__dict__ for f in self.kept.close()]
        excluded = [f.__dict__ for f in self.excluded.close()]
        record = {**self.stats, "kept_files": kept, "excluded_files": excluded}
        atomic_write_json(self.marker, record)
        return record

    def abort(self) -> None:
        self.kept.abort()
        self.excluded.abort()


def _text_bytes(batch) -> int:
    return int(pc.sum(pc.binary_length(batch.column("text").cast(pa.string()))).as_py() or 0)


def run_apply(stage: str, output_dir: Path, shards: list[Shard], fn, extra_args: tuple, *, workers: int,
              executor: str, ray_address: str | None, compression: ShardCompression) -> list[dict]:
    """Run `fn(shard, output_dir, *extra_args, compression) -> marker dict` for every shard not yet
    done (`compression`: of the kept and excluded shards it writes through ShardOutput)."""
    for sub in ("kept", "excluded"):
        (output_dir / sub).mkdir(parents=True, exist_ok=True)
        clean_incomplete(output_dir / sub)
    todo = [s for s in shards if not (output_dir / "work" / "apply" / f"{s.name}.json").is_file()]
    run_tasks(fn, [(s, output_dir, *extra_args, compression) for s in todo], workers=workers, executor=executor,
              ray_address=ray_address, desc=f"{stage}: write")
    return [read_json(output_dir / "work" / "apply" / f"{s.name}.json") for s in shards]


def finish_stage(stage: str, output_dir: Path, records: list[dict], started: float, extra: dict) -> dict:
    """Manifests of kept/ and excluded/ (input order), then stats.json last."""
    kept = [ShardFile(**f) for r in records for f in r["kept_files"]]
    excluded = [ShardFile(**f) for r in records for f in r["excluded_files"]]
    write_manifest(output_dir / "kept", kept, DOC_SCHEMA, {"stage": stage})
    write_manifest(output_dir / "excluded", excluded, EXCLUDED_SCHEMA, {"stage": stage})
    reasons: dict[str, int] = {}
    for r in records:
        for k, v in r["excluded"].items():
            reasons[k] = reasons.get(k, 0) + v
    stats = {"stage": stage,
             **{k: sum(r[k] for r in records) for k in ("docs_in", "docs_out", "bytes_in", "bytes_out")},
             "excluded": dict(sorted(reasons.items())),
             "seconds": round(time.time() - started, 3), **extra}
    atomic_write_json(output_dir / "stats.json", stats)
    return stats


def peak_rss_mb() -> dict:
    """Peak resident memory so far of this (the driver's) process. Tasks are not measured here: pool
    workers outlive a stage in a pipeline run and Ray tasks run elsewhere (bench/bench_dedup_memory.py
    measures a stage's pool workers)."""
    return {"driver": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}   # Linux: KiB


def timed(stats: dict, key: str, t0: float) -> float:
    now = time.time()
    stats.setdefault("step_seconds", {})[key] = round(now - t0, 3)
    return now


def apply_cluster_decisions(shard: Shard, output_dir: Path, stage: str, reason: str,
                            compression: ShardCompression) -> dict:
    """Write one shard's kept and excluded documents from its own file of cluster decisions."""
    mine = read_decisions(output_dir / "work", shard).to_pydict()
    by_doc = {d - shard.first_doc: (c, s, dup) for d, c, s, dup in
              zip(mine["doc"], mine["cluster_id"], mine["cluster_size"], mine["duplicate_of"])}
    out = ShardOutput(output_dir, shard, stage, compression)
    try:
        row = 0
        for batch in iter_shard(shard):
            batch = batch.select(DOC_SCHEMA.names)
            out.count_input(batch)
            notes = batch.column("annotations").to_pylist()
            drop = np.zeros(batch.num_rows, dtype=bool)
            for i in range(batch.num_rows):
                hit = by_doc.get(row + i)
                if hit is None:
                    continue
                cluster, size, dup = hit
                key = f"{stage}_cluster"
                if dup is None:
                    notes[i] = add_annotations(notes[i], {key: {"cluster_id": cluster, "cluster_size": size}})
                else:
                    drop[i] = True
                    notes[i] = add_annotations(notes[i], {"duplicate_of": dup, "cluster_id": cluster,
                                                          "cluster_size": size, "dedup_stage": stage})
            row += batch.num_rows
            out.split(batch, notes, drop, reason)
        return out.finish()
    except BaseException:
        out.abort()
        raise
