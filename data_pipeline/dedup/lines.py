"""Paragraph- and sentence-level dedup: a unit (a line, or a sentence with Chinese and Latin end
punctuation) found in at least `min_count` documents is removed from every document but its keeper:
the first in survivor order (highest quality, longest, smallest id) among the documents that stay.
A document left shorter than `min_doc_chars` is excluded.

Steps (each resumable): unit keys per shard, in parallel -> count documents per key across all
shards, first keepers -> per shard, in parallel, the documents those keepers leave too short ->
final keepers, passed over the too-short documents -> rewrite each shard -> manifests, stats.json.

A keeper that turns out too short (it lost other units) would take its unit out of kept/ with it,
so keepers are chosen again without the too-short documents. That only gives units back to the
documents that stay, so no other document becomes too short and the rewrite excludes exactly them.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from data_pipeline.schema import DOC_SCHEMA
from stack_common.config import Checks

from .common import (Shard, ShardOutput, add_annotations, doc_meta, finish_stage, input_shards, iter_shard,
                     load_config, prepare_work, read_arrow, run_apply, survivor_rank, timed, write_arrow)
from .parallel import run_tasks
from .text import normalize, split_units, unit_key

STAGE = "line_dedup"
REASON = "too_short_after_line_dedup"
UNITS = ("paragraph", "sentence")


@dataclass
class LineConfig:
    unit: str = "paragraph"             # paragraph (one line) | sentence
    min_count: int = 3                  # documents a unit must appear in to count as repeated
    min_unit_chars: int = 20            # shorter units (normalized) are never removed
    min_doc_chars: int = 50             # documents shorter than this after removal are excluded
    skip_langs: list[str] = field(default_factory=lambda: ["code"])


def check_config(conf: LineConfig) -> None:
    checks = Checks()
    checks.require(conf.unit in UNITS, f"dedup.line.unit: {conf.unit!r} is not one of {', '.join(UNITS)}")
    checks.require(conf.min_count >= 2, "dedup.line.min_count: must be at least 2")
    checks.require(conf.min_unit_chars >= 1, "dedup.line.min_unit_chars: must be at least 1")
    checks.raise_if_any()


def doc_unit_keys(text: str, conf: LineConfig) -> list[int | None]:
    """Key of each unit of `text`, None for units too short to be removed."""
    keys = []
    for unit in split_units(text, conf.unit):
        key, length = unit_key(unit)
        keys.append(key if length >= conf.min_unit_chars else None)
    return keys


def _unit_shard(shard: Shard, work: Path, conf: LineConfig) -> None:
    metas, keys, docs = [], [], []
    row = shard.first_doc
    for batch in iter_shard(shard, ["id", "text", "lang", "quality_score"]):
        for text, lang in zip(batch.column("text").to_pylist(), batch.column("lang").to_pylist()):
            if lang not in conf.skip_langs:
                distinct = {k for k in doc_unit_keys(text or "", conf) if k is not None}
                keys.extend(sorted(distinct))
                docs.extend([row] * len(distinct))
            row += 1
        metas.append(pa.table(doc_meta(batch)))
    write_arrow(work / "units" / f"{shard.name}.arrow",
                pa.table({"key": pa.array(keys, pa.uint64()), "doc": pa.array(docs, pa.int64())}))
    meta = pa.concat_tables(metas) if metas else pa.table({"id": pa.array([], pa.string()),
                                                           "quality_score": pa.array([], pa.float32()),
                                                           "n_chars": pa.array([], pa.int64())})
    write_arrow(work / "docs" / f"{shard.name}.arrow", meta)     # last: marks the shard done


def repeated_units(keys: np.ndarray, ranks: np.ndarray, min_count: int) -> tuple[np.ndarray, np.ndarray]:
    """Keys found in >= min_count documents, and the best-ranked document holding each."""
    order = np.lexsort((ranks, keys))
    keys, ranks = keys[order], ranks[order]
    starts = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]])) if len(keys) else np.zeros(0, int)
    counts = np.diff(np.append(starts, len(keys)))
    hit = starts[counts >= min_count]
    return keys[hit], ranks[hit]


def choose_keepers(units: pa.Table, rank: np.ndarray, min_count: int,
                   too_short: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Repeated keys and the document keeping each: the best-ranked holder, documents in `too_short`
    last (they keep a unit only when every holder is too short)."""
    n = len(rank)
    penalized = rank.copy()
    if too_short is not None and len(too_short):
        penalized[too_short] += n
    keys, keeper = repeated_units(units.column("key").to_numpy(), penalized[units.column("doc").to_numpy()],
                                  min_count)
    return keys, np.argsort(rank)[keeper % n]


def affected_docs(units: pa.Table, rep_keys: np.ndarray, rep_keeper: np.ndarray) -> np.ndarray:
    """Documents holding a repeated unit they do not keep: the only ones the rewrite has to touch."""
    keys, docs = units.column("key").to_numpy(), units.column("doc").to_numpy()
    if len(rep_keys) == 0:
        return np.zeros(0, dtype=np.int64)
    pos = np.minimum(np.searchsorted(rep_keys, keys), len(rep_keys) - 1)
    hit = (rep_keys[pos] == keys) & (rep_keeper[pos] != docs)
    return np.unique(docs[hit]).astype(np.int64)


def _write_keepers(work: Path, prefix: str, units: pa.Table, keys: np.ndarray, keeper_doc: np.ndarray) -> None:
    write_arrow(work / f"{prefix}affected.arrow", pa.table({"doc": affected_docs(units, keys, keeper_doc)}))
    write_arrow(work / f"{prefix}repeated.arrow", pa.table({"key": pa.array(keys, pa.uint64()),
                                                            "keeper_doc": pa.array(keeper_doc, pa.int64())}))


def _read_keepers(work: Path, prefix: str) -> tuple[np.ndarray, np.ndarray, set[int]]:
    repeated = read_arrow(work / f"{prefix}repeated.arrow")
    affected = set(read_arrow(work / f"{prefix}affected.arrow").column("doc").to_numpy().tolist())
    return repeated.column("key").to_numpy(), repeated.column("keeper_doc").to_numpy(), affected


def _too_short_shard(shard: Shard, work: Path, conf: LineConfig) -> None:
    """Documents of one shard that the first keepers leave shorter than min_doc_chars."""
    rep_keys, rep_keeper, affected = _read_keepers(work, "first_")
    short, doc = [], shard.first_doc
    for batch in iter_shard(shard, ["text"]):
        for i, text in enumerate(batch.column("text").to_pylist()):
            if doc + i in affected:
                new_text, removed = _strip_repeated(text, doc + i, conf, rep_keys, rep_keeper)
                if removed and len(normalize(new_text)) < conf.min_doc_chars:
                    short.append(doc + i)
        doc += batch.num_rows
    write_arrow(work / "too_short" / f"{shard.name}.arrow", pa.table({"doc": pa.array(short, pa.int64())}))


def _apply_shard(shard: Shard, output_dir: Path, conf: LineConfig, stage: str) -> dict:
    rep_keys, rep_keeper, affected = _read_keepers(output_dir / "work", "")
    out = ShardOutput(output_dir, shard, stage)
    out.stats.update(removed_units=0, removed_chars=0, docs_modified=0)
    try:
        doc = shard.first_doc
        for batch in iter_shard(shard):
            batch = batch.select(DOC_SCHEMA.names)
            out.count_input(batch)
            cols = batch.to_pydict()
            excluded = np.zeros(batch.num_rows, dtype=bool)
            for i, (text, lang) in enumerate(zip(cols["text"], cols["lang"])):
                if doc + i in affected:
                    new_text, removed = _strip_repeated(text, doc + i, conf, rep_keys, rep_keeper)
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


def _strip_repeated(text: str, doc: int, conf: LineConfig, rep_keys: np.ndarray,
                    rep_keeper: np.ndarray) -> tuple[str, int]:
    units = split_units(text, conf.unit)
    kept, removed = [], 0
    for unit, key in zip(units, doc_unit_keys(text, conf)):
        if key is not None and len(rep_keys):
            pos = int(np.searchsorted(rep_keys, np.uint64(key)))
            if pos < len(rep_keys) and int(rep_keys[pos]) == key and int(rep_keeper[pos]) != doc:
                removed += 1
                continue
        kept.append(unit)
    return "".join(kept), removed


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

    if not (work / "repeated.arrow").is_file():
        meta = pa.concat_tables([read_arrow(work / "docs" / f"{s.name}.arrow") for s in shards])
        rank = survivor_rank(meta)
        units = pa.concat_tables([read_arrow(work / "units" / f"{s.name}.arrow") for s in shards])
        if not (work / "first_repeated.arrow").is_file():
            _write_keepers(work, "first_", units, *choose_keepers(units, rank, conf.min_count))
        t0 = timed(steps, "count", t0)
        todo = [s for s in shards if not (work / "too_short" / f"{s.name}.arrow").is_file()]
        run_tasks(_too_short_shard, [(s, work, conf) for s in todo], desc=f"{stage}: keepers", **par)
        too_short = np.concatenate([np.zeros(0, np.int64)] + [
            read_arrow(work / "too_short" / f"{s.name}.arrow").column("doc").to_numpy() for s in shards])
        _write_keepers(work, "", units, *choose_keepers(units, rank, conf.min_count, too_short))
    t0 = timed(steps, "keepers", t0)

    records = run_apply(stage, output_dir, shards, _apply_shard, (conf, stage), **par)
    timed(steps, "write", t0)
    extra = {k: sum(r[k] for r in records) for k in ("removed_units", "removed_chars", "docs_modified")}
    extra["repeated_units"] = read_arrow(work / "repeated.arrow").num_rows
    return finish_stage(stage, output_dir, records, started, {"unit": conf.unit, **extra, **steps})
