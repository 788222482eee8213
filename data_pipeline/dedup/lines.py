"""Paragraph- and sentence-level dedup: a unit (a line, or a sentence with Chinese and Latin end
punctuation) found in at least `min_count` documents is removed from every document but its keeper:
the first in survivor order (highest quality, longest, smallest id) among the documents that stay.
A document left shorter than `min_doc_chars` is excluded.

Steps (each resumable, each a set of tasks):
  units       per shard: its (key, doc) pairs sorted by key and, per distinct key, a holder row: how
              many of the shard's documents hold the key and the best of them in survivor order (the
              shard ranks its own documents: common.survivor_rank); uncompressed Arrow, memory-mapped;
  count       per key partition (a range of the 64-bit key hash, P of them): the holder rows of every
              shard for its keys; a key held by >= min_count documents in all is repeated, its first
              keeper is the best of its shards' best holders. Written per input shard (one record
              batch each): the repeated keys the shard holds, with their keeper;
  too short   per shard: its removals (its pairs joined with its own keeper batches, the pairs of
              other documents than the keeper), the documents they leave too short, and holder rows
              again with the too-short documents ranked after all others;
  keepers     per key partition, from those holder rows: the final keepers;
  write       per shard: rewrite it from its own keeper batches; manifests, stats.json.
A keeper task holds one row per (key, shard holding it), never one per (key, document), so a
boilerplate line held by every document costs one row per shard: P = ceil(rows * BYTES_PER_ROW /
memory_budget_mb) (common.partition_count). Ids are read (from the shards' memory-mapped meta) only
for best holders of one key that tie on quality and length across shards.

A keeper that turns out too short (it lost other units) would take its unit out of kept/ with it,
so keepers are chosen again with the too-short documents last. That only gives units back to the
documents that stay, so no other document becomes too short and the rewrite excludes exactly them.
Each key's keeper depends only on the holders of that key, so the argument holds per partition, and
the best holder of a shard with the too-short documents last is found by the shard alone.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data_pipeline.schema import DOC_SCHEMA
from stack_common.config import Checks
from stack_common.shards import ShardCompression

from .common import (Shard, ShardOutput, ids_of, add_annotations, column_numpy, doc_meta,
                     finish_stage, input_shards, iter_shard, load_config, partition_count, prepare_work,
                     read_arrow, read_partition, run_apply, survivor_rank, timed, write_arrow, write_partitioned)
from .parallel import run_tasks
from .text import normalize, split_units, unit_keys

STAGE = "line_dedup"
REASON = "too_short_after_line_dedup"
UNITS = ("paragraph", "sentence")
BYTES_PER_ROW = 200     # a keeper task's peak bytes per holder row (measured 164 in numpy; Arrow output copies)
HOLDER_SCHEMA = pa.schema([("key", pa.uint64()), ("count", pa.int64()), ("doc", pa.int64()), ("short", pa.bool_()),
                           ("quality", pa.float32()), ("n_chars", pa.int64())])
KEEPER_SCHEMA = pa.schema([("key", pa.uint64()), ("keeper", pa.int64())])


@dataclass
class LineConfig:
    unit: str = "paragraph"             # paragraph (one line) | sentence
    min_count: int = 3                  # documents a unit must appear in to count as repeated
    min_unit_chars: int = 20            # shorter units (normalized) are never removed
    min_doc_chars: int = 50             # documents shorter than this after removal are excluded
    skip_langs: list[str] = field(default_factory=lambda: ["code"])
    memory_budget_mb: float = 1024      # (key, doc) pairs one keeper task may hold: sets the partition count


def check_config(conf: LineConfig) -> None:
    checks = Checks()
    checks.require(conf.unit in UNITS, f"dedup.line.unit: {conf.unit!r} is not one of {', '.join(UNITS)}")
    checks.require(conf.min_count >= 2, "dedup.line.min_count: must be at least 2")
    checks.require(conf.min_unit_chars >= 1, "dedup.line.min_unit_chars: must be at least 1")
    checks.require(conf.memory_budget_mb > 0, "dedup.line.memory_budget_mb: must be positive")
    checks.raise_if_any()


def doc_unit_keys(text: str, conf: LineConfig) -> list[int | None]:
    """Key of each unit of `text`, None for units too short to be removed."""
    return [key if length >= conf.min_unit_chars else None for key, length in unit_keys(split_units(text, conf.unit))]


def _unit_shard(shard: Shard, work: Path, conf: LineConfig) -> None:
    """The shard's (key, doc) pairs sorted by key, its documents' meta, and its holder rows."""
    metas, keys, counts = [], [], []
    for batch in iter_shard(shard, ["id", "text", "lang", "quality_score"]):
        for text, lang in zip(batch.column("text").to_pylist(), batch.column("lang").to_pylist()):
            distinct = set() if lang in conf.skip_langs else \
                {k for k in doc_unit_keys(text or "", conf) if k is not None}
            keys.extend(distinct)
            counts.append(len(distinct))
        metas.append(pa.table(doc_meta(batch)))
    meta = pa.concat_tables(metas) if metas else pa.table({"id": pa.array([], pa.string()),
                                                           "quality_score": pa.array([], pa.float32()),
                                                           "n_chars": pa.array([], pa.int64())})
    counts = np.array(counts, np.int64)
    keys = np.array(keys, np.uint64)
    local = np.repeat(np.arange(len(counts)), counts)
    order = np.lexsort((survivor_rank(meta)[local], keys))    # by key, holders in survivor order
    keys, local = keys[order], local[order]
    write_arrow(work / "units" / f"{shard.name}.arrow", pa.table({"key": keys, "doc": local + shard.first_doc}),
                compression=None)
    write_arrow(work / "holders1" / f"{shard.name}.arrow",
                _holder_rows(keys, local, meta, shard.first_doc, np.zeros(len(counts), bool)), compression=None)
    write_arrow(work / "docs" / f"{shard.name}.arrow", meta, compression=None)     # last: marks the shard done


def _holder_rows(keys: np.ndarray, local: np.ndarray, meta: pa.Table, first_doc: int, short: np.ndarray) -> pa.Table:
    """One row per distinct key of one shard's pairs (`keys` sorted, each key's holders `local` in
    survivor order): how many documents hold it, and the first of them with its survivor-order columns."""
    starts = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]])) if len(keys) else np.zeros(0, np.int64)
    best = local[starts]
    quality = meta.column("quality_score").to_numpy(zero_copy_only=False).astype(np.float32)    # null: NaN
    return pa.table({"key": keys[starts], "count": np.diff(np.append(starts, len(keys))), "doc": best + first_doc,
                     "short": short[best], "quality": quality[best], "n_chars": column_numpy(meta, "n_chars")[best]},
                    schema=HOLDER_SCHEMA)


def key_range(keys: np.ndarray, part: int, n_parts: int) -> tuple[int, int]:
    """Rows of sorted `keys` in partition `part`: keys in [part, part + 1) * 2**64 / n_parts.
    The keys are hashes, so equal ranges hold about equal shares of the rows."""
    lo = int(np.searchsorted(keys, np.uint64((part << 64) // n_parts)))
    hi = len(keys) if part + 1 == n_parts else int(np.searchsorted(keys, np.uint64(((part + 1) << 64) // n_parts)))
    return lo, hi


def _partition_rows(part: int, n_parts: int, shards: list[Shard], work: Path,
                    holders_dir: str) -> dict[str, np.ndarray]:
    """The holder rows of one key partition, read from every shard's memory-mapped holders file."""
    columns = {f.name: [np.zeros(0, f.type.to_pandas_dtype())] for f in HOLDER_SCHEMA}
    for s in shards:
        rows = read_arrow(work / holders_dir / f"{s.name}.arrow")
        lo, hi = key_range(column_numpy(rows, "key"), part, n_parts)
        for name, parts in columns.items():
            parts.append(rows.column(name).slice(lo, hi - lo).to_numpy(zero_copy_only=False))
    return {name: np.concatenate(parts) for name, parts in columns.items()}


def survivor_order(rows: dict[str, np.ndarray], shards: list[Shard], work: Path) -> np.ndarray:
    """Order of holder `rows` by key, then holders in survivor order (common.survivor_rank: highest
    quality, null last, -inf before null; longest; smallest id; input order), too-short documents
    (`short`) after all others. Ids are read only for holders that tie on the other columns with their
    key's best holder."""
    quality = rows["quality"].astype(np.float64)
    null = np.isnan(quality)
    columns = [rows["key"], rows["short"], null, np.where(null, 0.0, -quality), -rows["n_chars"]]
    order = np.lexsort((rows["doc"], *columns[::-1]))
    if not len(order):
        return order
    same = np.ones(len(order) - 1, bool)            # position i + 1 ties with position i on every column
    for c in columns:
        c = c[order]
        same &= c[1:] == c[:-1]
    run = np.concatenate([[0], np.cumsum(~same)])   # runs of tied positions
    keys = rows["key"][order]
    best = run[np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]]))]     # each key's leading run
    tied = np.flatnonzero(np.isin(run, best[np.isin(best, run[1:][same])]))       # ... when it has 2+ holders
    if not len(tied):
        return order
    tied_docs = np.unique(rows["doc"][order[tied]])
    id_rank = pc.rank(ids_of(work / "docs", shards, tied_docs), tiebreaker="dense").to_numpy()   # 1: smallest
    id_code = np.zeros(len(order), np.int64)
    id_code[order[tied]] = id_rank[np.searchsorted(tied_docs, rows["doc"][order[tied]])]
    return np.lexsort((rows["doc"], id_code, *columns[::-1]))


def _keeper_partition(part: int, n_parts: int, shards: list[Shard], work: Path, min_count: int,
                      holders_dir: str, out_dir: str) -> None:
    """Keeper of every repeated key of one partition: its first holder in survivor order (holder rows
    written after the too-short step rank too-short documents last, so those keep a unit only when
    every holder is too short). Written: one record batch per input shard (in shard order) of the
    repeated keys it holds, sorted, with their keeper."""
    rows = _partition_rows(part, n_parts, shards, work, holders_dir)
    order = survivor_order(rows, shards, work)
    keys, counts, docs = rows["key"][order], rows["count"][order], rows["doc"][order]
    del rows, order
    starts = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]])) if len(keys) else np.zeros(0, np.int64)
    lengths = np.diff(np.append(starts, len(keys)))
    hit = (np.add.reduceat(counts, starts) if len(keys) else np.zeros(0, np.int64)) >= min_count
    mine = np.repeat(hit, lengths)
    firsts = np.array([s.first_doc for s in shards], np.int64)
    shard_of = np.searchsorted(firsts, docs[mine], side="right") - 1
    schema = KEEPER_SCHEMA.with_metadata({"repeated_units": str(int(np.count_nonzero(hit)))})
    write_partitioned(work / out_dir / f"p{part:05d}.arrow", schema,
                      {"key": keys[mine], "keeper": np.repeat(docs[starts], lengths)[mine]}, shard_of, len(shards))


def _shard_removals(shard: Shard, work: Path, keeper_dir: str, n_parts: int) -> dict[int, set[int]]:
    """Keys each document of this shard must remove: its pairs whose key is repeated and kept by
    another document, from its own batch of every partition's keepers."""
    units = read_arrow(work / "units" / f"{shard.name}.arrow")
    keys, docs = column_numpy(units, "key"), column_numpy(units, "doc")
    batches = [read_partition(work / keeper_dir / f"p{part:05d}.arrow", shard.index) for part in range(n_parts)]
    repeated = np.concatenate([np.zeros(0, np.uint64)] + [b.column("key").to_numpy() for b in batches])
    keeper = np.concatenate([np.zeros(0, np.int64)] + [b.column("keeper").to_numpy() for b in batches])
    removals: dict[int, set[int]] = {}
    if not len(repeated):
        return removals
    at = np.minimum(np.searchsorted(repeated, keys), len(repeated) - 1)    # partitions are ascending key ranges
    drop = (repeated[at] == keys) & (keeper[at] != docs)
    for doc, key in zip(docs[drop].tolist(), keys[drop].tolist()):
        removals.setdefault(doc, set()).add(key)
    return removals


def _too_short_shard(shard: Shard, work: Path, conf: LineConfig, n_parts: int) -> None:
    """Documents of one shard that the first keepers leave shorter than min_doc_chars, and the shard's
    holder rows again with those documents ranked after all others."""
    removals = _shard_removals(shard, work, "first", n_parts)
    short, doc = np.zeros(shard.rows, bool), shard.first_doc
    for batch in iter_shard(shard, ["text"]):
        for i, text in enumerate(batch.column("text").to_pylist()):
            if doc + i in removals:
                new_text, removed = _strip_repeated(text, conf, removals[doc + i])
                short[doc + i - shard.first_doc] = bool(removed) and len(normalize(new_text)) < conf.min_doc_chars
        doc += batch.num_rows
    units, meta = read_arrow(work / "units" / f"{shard.name}.arrow"), read_arrow(work / "docs" / f"{shard.name}.arrow")
    keys, local = column_numpy(units, "key"), column_numpy(units, "doc") - shard.first_doc
    order = np.lexsort((survivor_rank(meta)[local], short[local], keys))
    write_arrow(work / "holders2" / f"{shard.name}.arrow",
                _holder_rows(keys[order], local[order], meta, shard.first_doc, short), compression=None)


def _apply_shard(shard: Shard, output_dir: Path, conf: LineConfig, stage: str, n_parts: int,
                 compression: ShardCompression) -> dict:
    removals = _shard_removals(shard, output_dir / "work", "final", n_parts)
    out = ShardOutput(output_dir, shard, stage, compression)
    out.stats.update(removed_units=0, removed_chars=0, docs_modified=0)
    try:
        doc = shard.first_doc
        for batch in iter_shard(shard):
            batch = batch.select(DOC_SCHEMA.names)
            out.count_input(batch)
            cols = batch.to_pydict()
            excluded = np.zeros(batch.num_rows, dtype=bool)
            for i, text in enumerate(cols["text"]):
                if doc + i in removals:
                    new_text, removed = _strip_repeated(text, conf, removals[doc + i])
                    if removed:
                        out.stats["removed_units"] += removed
                        out.stats["removed_chars"] += len(text) - len(new_text)
                        out.stats["docs_modified"] += 1
                        note = {stage: {"removed_units": removed, "removed_chars": len(text) - len(new_text)}}
                        cols["annotations"][i] = add_annotations(cols["annotations"][i], note)
                        if len(normalize(new_text)) < conf.min_doc_chars:
                            excluded[i] = True     # excluded with its original text, for inspection
                        else:
                            cols["text"][i] = new_text
            doc += batch.num_rows
            table = pa.Table.from_pydict(cols, schema=DOC_SCHEMA)
            out.keep(table.filter(pa.array(~excluded)))
            out.exclude(table.filter(pa.array(excluded)), REASON)
        return out.finish()
    except BaseException:
        out.abort()
        raise


def _strip_repeated(text: str, conf: LineConfig, remove: set[int]) -> tuple[str, int]:
    """`text` without its units whose key is in `remove`, and how many units that took out."""
    kept, removed = [], 0
    for unit, key in zip(split_units(text, conf.unit), doc_unit_keys(text, conf)):
        if key is not None and key in remove:
            removed += 1
        else:
            kept.append(unit)
    return "".join(kept), removed


def _run_keepers(holders_dir: str, out_dir: str, n_parts: int, shards: list[Shard], work: Path,
                 conf: LineConfig, par: dict, desc: str) -> None:
    todo = [p for p in range(n_parts) if not (work / out_dir / f"p{p:05d}.arrow").is_file()]
    run_tasks(_keeper_partition, [(p, n_parts, shards, work, conf.min_count, holders_dir, out_dir) for p in todo],
              desc=desc, **par)


def _repeated_count(work: Path, n_parts: int) -> int:
    return sum(int(read_arrow(work / "final" / f"p{part:05d}.arrow").schema.metadata[b"repeated_units"])
               for part in range(n_parts))


def run(input_dir: Path, output_dir: Path, cfg: dict, workers: int = 1, executor: str = "local",
        ray_address: str | None = None, stage: str = STAGE,
        compression: ShardCompression = ShardCompression()) -> dict:
    started = t0 = time.time()
    conf = load_config(cfg, LineConfig, "dedup.line")
    check_config(conf)
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    work = output_dir / "work"
    shards = input_shards(input_dir)
    prepare_work(input_dir, output_dir, stage, conf)
    par = dict(workers=workers, executor=executor, ray_address=ray_address)
    steps: dict = {}

    todo = [s for s in shards if not (work / "docs" / f"{s.name}.arrow").is_file()]
    run_tasks(_unit_shard, [(s, work, conf) for s in todo], desc=f"{stage}: units", **par)
    t0 = timed(steps, "units", t0)

    rows = sum(read_arrow(work / "holders1" / f"{s.name}.arrow").num_rows for s in shards)
    n_parts = partition_count(rows, BYTES_PER_ROW, conf.memory_budget_mb)
    _run_keepers("holders1", "first", n_parts, shards, work, conf, par, f"{stage}: count")
    t0 = timed(steps, "count", t0)
    todo = [s for s in shards if not (work / "holders2" / f"{s.name}.arrow").is_file()]
    run_tasks(_too_short_shard, [(s, work, conf, n_parts) for s in todo], desc=f"{stage}: too short", **par)
    _run_keepers("holders2", "final", n_parts, shards, work, conf, par, f"{stage}: keepers")
    t0 = timed(steps, "keepers", t0)

    records = run_apply(stage, output_dir, shards, _apply_shard, (conf, stage, n_parts),
                        compression=compression, **par)
    timed(steps, "write", t0)
    extra = {k: sum(r[k] for r in records) for k in ("removed_units", "removed_chars", "docs_modified")}
    extra["repeated_units"] = _repeated_count(work, n_parts)
    extra["partitions"] = n_parts
    return finish_stage(stage, output_dir, records, started, {"unit": conf.unit, **extra, **steps})
