"""Paragraph- and sentence-level dedup: a unit (a line, or a sentence with Chinese and Latin end
punctuation) found in at least `min_count` documents is removed from every document but its keeper:
the first in survivor order (highest quality, longest, smallest id) among the documents that stay.
A document left shorter than `min_doc_chars` is excluded.

Steps (each resumable, each a set of tasks):
  units       per shard: the (key, doc) pairs of its documents sorted by key, with the document's
              quality and length, in an uncompressed Arrow file that later steps memory-map;
  count       per key partition (a range of the 64-bit key hash, P of them): the first keepers, and
              per input shard the (doc, key) pairs it must remove (one record batch per shard);
  too short   per shard, from its own batches only: the documents the first keepers leave too short;
  keepers     per key partition: the final keepers, passed over the too-short documents;
  write       per shard: rewrite it from its own batches of the final removals; manifests, stats.json.
P = ceil(pairs * BYTES_PER_PAIR / memory_budget_mb), pairs counted after the units step, so a keeper
task holds about one budget. Survivor order is decided inside a partition from the pairs' quality
and length; ids are read (from the shards' memory-mapped meta) only where those tie. Nothing holds
the whole corpus but the list of too-short documents, which every keeper task of the second pass reads.

A keeper that turns out too short (it lost other units) would take its unit out of kept/ with it,
so keepers are chosen again without the too-short documents. That only gives units back to the
documents that stay, so no other document becomes too short and the rewrite excludes exactly them.
Each key's keeper depends only on the holders of that key, so the argument holds per partition.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data_pipeline.schema import DOC_SCHEMA
from stack_common.config import Checks

from .common import (ArrowFileWriter, Shard, ShardOutput, add_annotations, doc_meta, finish_stage, input_shards,
                     iter_shard, load_config, prepare_work, read_arrow, run_apply, timed, write_arrow)
from .parallel import run_tasks
from .text import normalize, split_units, unit_key

STAGE = "line_dedup"
REASON = "too_short_after_line_dedup"
UNITS = ("paragraph", "sentence")
BYTES_PER_PAIR = 128    # a keeper task's peak bytes per pair (measured 118: columns, sort orders, copies)
REMOVE_SCHEMA = pa.schema([("doc", pa.int64()), ("key", pa.uint64())])


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
    keys = []
    for unit in split_units(text, conf.unit):
        key, length = unit_key(unit)
        keys.append(key if length >= conf.min_unit_chars else None)
    return keys


def _unit_shard(shard: Shard, work: Path, conf: LineConfig) -> None:
    """The shard's (key, doc) pairs sorted by key, each with its document's survivor-order columns
    (quality, n_chars; the id is looked up only for ties), and the documents' meta."""
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
    order = np.lexsort((local, keys))       # by key: a partition is one contiguous key range
    local = local[order]
    quality = meta.column("quality_score").to_numpy(zero_copy_only=False).astype(np.float32)  # null: NaN
    units = {"key": keys[order], "doc": local + shard.first_doc, "quality": quality[local],
             "n_chars": meta.column("n_chars").to_numpy()[local]}
    write_arrow(work / "units" / f"{shard.name}.arrow", pa.table(units), compression=None)
    write_arrow(work / "docs" / f"{shard.name}.arrow", meta, compression=None)     # last: marks the shard done


def partition_count(pairs: int, memory_budget_mb: float) -> int:
    """Key partitions so that one keeper task holds at most `memory_budget_mb` of pairs:
    P = ceil(pairs * BYTES_PER_PAIR / budget)."""
    return max(1, math.ceil(pairs * BYTES_PER_PAIR / (memory_budget_mb * 2 ** 20)))


def key_range(keys: np.ndarray, part: int, n_parts: int) -> tuple[int, int]:
    """Rows of sorted `keys` in partition `part`: keys in [part, part + 1) * 2**64 / n_parts.
    The keys are hashes, so equal ranges hold about equal shares of the pairs."""
    lo = int(np.searchsorted(keys, np.uint64((part << 64) // n_parts)))
    hi = len(keys) if part + 1 == n_parts else int(np.searchsorted(keys, np.uint64(((part + 1) << 64) // n_parts)))
    return lo, hi


def _numpy(table: pa.Table, name: str) -> np.ndarray:
    column = table.column(name)
    return column.chunk(0).to_numpy() if column.num_chunks == 1 else column.to_numpy()


def repeated_units(keys: np.ndarray, min_count: int) -> tuple[np.ndarray, np.ndarray, int]:
    """For sorted `keys` (a key once per document holding it): per pair, whether its key is found in
    >= min_count documents and the position of its key's first pair; and how many keys are repeated."""
    starts = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]])) if len(keys) else np.zeros(0, int)
    counts = np.diff(np.append(starts, len(keys)))
    hit = counts >= min_count
    return np.repeat(hit, counts), np.repeat(starts, counts), int(np.count_nonzero(hit))


def _partition_pairs(part: int, n_parts: int, shards: list[Shard], work: Path) -> dict[str, np.ndarray]:
    """The pairs of one key partition, read from every shard's memory-mapped units file."""
    columns = {"key": [np.zeros(0, np.uint64)], "doc": [np.zeros(0, np.int64)],
               "quality": [np.zeros(0, np.float32)], "n_chars": [np.zeros(0, np.int64)]}
    for s in shards:
        units = read_arrow(work / "units" / f"{s.name}.arrow")
        lo, hi = key_range(_numpy(units, "key"), part, n_parts)
        for name, parts in columns.items():
            parts.append(_numpy(units, name)[lo:hi])
    return {name: np.concatenate(parts) for name, parts in columns.items()}


def _doc_ids(docs: np.ndarray, shards: list[Shard], work: Path) -> pa.ChunkedArray:
    """Ids of `docs` (sorted global indices), taken from the shards' memory-mapped meta files."""
    ids = [pa.chunked_array([], pa.string())]
    firsts = np.array([s.first_doc for s in shards], np.int64)
    which = np.searchsorted(firsts, docs, side="right") - 1
    for i in np.unique(which):
        meta = read_arrow(work / "docs" / f"{shards[i].name}.arrow")
        ids.append(meta.column("id").take(pa.array(docs[which == i] - firsts[i])))
    return pa.chunked_array([c for chunked in ids for c in chunked.chunks], pa.string())


def survivor_order(pairs: dict[str, np.ndarray], short: np.ndarray, shards: list[Shard], work: Path) -> np.ndarray:
    """Order of `pairs` by key, then holders in survivor order (common.survivor_rank: highest quality,
    null last; longest; smallest id; input order), documents in `short` after all others. Ids are
    read only for holders that tie on the other columns with their key's best holder."""
    quality = pairs["quality"].astype(np.float64)
    columns = [pairs["key"], short, np.where(np.isnan(quality), np.inf, -quality), -pairs["n_chars"]]
    order = np.lexsort((pairs["doc"], *columns[::-1]))
    if not len(order):
        return order
    same = np.ones(len(order) - 1, bool)            # position i + 1 ties with position i on every column
    for c in columns:
        c = c[order]
        same &= c[1:] == c[:-1]
    run = np.concatenate([[0], np.cumsum(~same)])   # runs of tied positions
    keys = pairs["key"][order]
    best = run[np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]]))]     # each key's leading run
    tied = np.flatnonzero(np.isin(run, best[np.isin(best, run[1:][same])]))       # ... when it has 2+ holders
    if not len(tied):
        return order
    tied_docs = np.unique(pairs["doc"][order[tied]])
    id_rank = pc.rank(_doc_ids(tied_docs, shards, work), tiebreaker="dense").to_numpy()     # 1 = smallest, null last
    id_code = np.zeros(len(order), np.int64)
    id_code[order[tied]] = id_rank[np.searchsorted(tied_docs, pairs["doc"][order[tied]])]
    return np.lexsort((pairs["doc"], id_code, *columns[::-1]))


def _keeper_partition(part: int, n_parts: int, shards: list[Shard], work: Path, min_count: int,
                      out_dir: str, too_short_dir: str | None) -> None:
    """Choose the keeper of every repeated key of one partition: its first holder in survivor order;
    documents found too short by the first keepers (`too_short_dir`) come last, so they keep a unit
    only when every holder is too short. Written: what each input shard must remove, as one record
    batch per shard (in shard order) of (doc, key) sorted by doc."""
    pairs = _partition_pairs(part, n_parts, shards, work)
    short = np.zeros(len(pairs["doc"]), bool)
    if too_short_dir is not None:
        short = np.isin(pairs["doc"], np.concatenate([np.zeros(0, np.int64)] + [
            _numpy(read_arrow(work / too_short_dir / f"{s.name}.arrow"), "doc") for s in shards]))
    order = survivor_order(pairs, short, shards, work)
    keys, docs = pairs["key"][order], pairs["doc"][order]
    del pairs, short, order
    repeated, first, n_repeated = repeated_units(keys, min_count)
    drop = repeated & (docs != docs[first])
    keys, docs = keys[drop], docs[drop]
    order = np.lexsort((keys, docs))
    keys, docs = keys[order], docs[order]
    n_docs = shards[-1].first_doc + shards[-1].rows if shards else 0
    cuts = np.searchsorted(docs, [s.first_doc for s in shards] + [n_docs])
    schema = REMOVE_SCHEMA.with_metadata({"repeated_units": str(n_repeated)})
    with ArrowFileWriter(work / out_dir / f"p{part:05d}.arrow", schema, compression=None) as writer:
        for i in range(len(shards)):
            writer.write({"doc": docs[cuts[i]:cuts[i + 1]], "key": keys[cuts[i]:cuts[i + 1]]})


def _shard_removals(shard: Shard, work: Path, keeper_dir: str, n_parts: int) -> dict[int, set[int]]:
    """(doc, key) pairs this shard must remove, from its own batch of every partition's file."""
    removals: dict[int, set[int]] = {}
    for part in range(n_parts):
        with pa.memory_map(str(work / keeper_dir / f"p{part:05d}.arrow")) as src:
            batch = pa.ipc.open_file(src).get_batch(shard.index)
            for doc, key in zip(batch.column("doc").to_pylist(), batch.column("key").to_pylist()):
                removals.setdefault(doc, set()).add(key)
    return removals


def _too_short_shard(shard: Shard, work: Path, conf: LineConfig, n_parts: int) -> None:
    """Documents of one shard that the first keepers leave shorter than min_doc_chars."""
    removals = _shard_removals(shard, work, "first", n_parts)
    short, doc = [], shard.first_doc
    for batch in iter_shard(shard, ["text"]):
        for i, text in enumerate(batch.column("text").to_pylist()):
            if doc + i in removals:
                new_text, removed = _strip_repeated(text, conf, removals[doc + i])
                if removed and len(normalize(new_text)) < conf.min_doc_chars:
                    short.append(doc + i)
        doc += batch.num_rows
    write_arrow(work / "too_short" / f"{shard.name}.arrow", pa.table({"doc": pa.array(short, pa.int64())}),
                compression=None)


def _apply_shard(shard: Shard, output_dir: Path, conf: LineConfig, stage: str, n_parts: int) -> dict:
    removals = _shard_removals(shard, output_dir / "work", "final", n_parts)
    out = ShardOutput(output_dir, shard, stage)
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


def _run_keepers(out_dir: str, too_short_dir: str | None, n_parts: int, shards: list[Shard], work: Path,
                 conf: LineConfig, par: dict, desc: str) -> None:
    todo = [p for p in range(n_parts) if not (work / out_dir / f"p{p:05d}.arrow").is_file()]
    run_tasks(_keeper_partition, [(p, n_parts, shards, work, conf.min_count, out_dir, too_short_dir) for p in todo],
              desc=desc, **par)


def _repeated_count(work: Path, n_parts: int) -> int:
    total = 0
    for part in range(n_parts):
        with pa.memory_map(str(work / "final" / f"p{part:05d}.arrow")) as src:
            total += int(pa.ipc.open_file(src).schema.metadata[b"repeated_units"])
    return total


def run(input_dir: Path, output_dir: Path, cfg: dict, workers: int = 1, executor: str = "local",
        ray_address: str | None = None, stage: str = STAGE) -> dict:
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

    pairs = sum(read_arrow(work / "units" / f"{s.name}.arrow").num_rows for s in shards)
    n_parts = partition_count(pairs, conf.memory_budget_mb)
    _run_keepers("first", None, n_parts, shards, work, conf, par, f"{stage}: count")
    t0 = timed(steps, "count", t0)
    todo = [s for s in shards if not (work / "too_short" / f"{s.name}.arrow").is_file()]
    run_tasks(_too_short_shard, [(s, work, conf, n_parts) for s in todo], desc=f"{stage}: too short", **par)
    _run_keepers("final", "too_short", n_parts, shards, work, conf, par, f"{stage}: keepers")
    t0 = timed(steps, "keepers", t0)

    records = run_apply(stage, output_dir, shards, _apply_shard, (conf, stage, n_parts), **par)
    timed(steps, "write", t0)
    extra = {k: sum(r[k] for r in records) for k in ("removed_units", "removed_chars", "docs_modified")}
    extra["repeated_units"] = _repeated_count(work, n_parts)
    extra["partitions"] = n_parts
    return finish_stage(stage, output_dir, records, started, {"unit": conf.unit, **extra, **steps})
