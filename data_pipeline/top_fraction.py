"""Quality by rank: keep the top fraction of scored documents per language.

The cut-off needs every score, so it runs after all units of the segment are scored: it
computes one cut-off (score, id) per language, saves it, then splits each unit's kept shards
into kept and excluded. Each unit is rewritten atomically and marked, so an interrupted pass
resumes with the same cut-offs and skips the units already done.

Order: best score first, ties by smallest id. A language's cut-off is the k-th document in that
order, k = max(1, ceil(fraction * n)) of its n documents scored >= 0. It is found without holding
every score: quality scores are float32, and a non-negative float32's bits sort like its value, so
two passes over the units count documents per high and then per low 16 bits of the score (a radix
selection: memory is two 65536-bin histograms per language), and a third collects the ids of the
documents with exactly the k-th score, only these are sorted. Each unit is read batch by batch.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stack_common.atomic import atomic_dir, atomic_write_json, read_json
from stack_common.shards import iter_batches, read_table, write_table

from .schema import EXCLUDED_SCHEMA

MARK = "top_fraction_applied"
LOW_BITS = 16


def _score_bits(batches: Iterator[pa.RecordBatch], lang: str) -> Iterator[tuple[np.ndarray, pa.RecordBatch, int]]:
    """Per batch: the float32 bits of the scores >= 0 of `lang` (they sort like the scores), those
    rows, and the position of the first of them in the batch (its row count when there is none)."""
    for batch in batches:
        score = batch.column("quality_score").cast(pa.float32())
        mine = pc.fill_null(pc.and_(pc.equal(batch.column("lang"), lang), pc.greater_equal(score, 0.0)), False)
        rows = batch.filter(mine)
        first = int(np.argmax(mine.to_numpy(zero_copy_only=False))) if rows.num_rows else batch.num_rows
        values = rows.column("quality_score").cast(pa.float32()).to_numpy(zero_copy_only=False) + np.float32(0.0)
        yield values.view(np.uint32), rows, first      # + 0.0: -0.0 becomes 0.0, which it equals


def _kth_bin(hist: np.ndarray, k: int) -> tuple[int, int]:
    """The bin holding the k-th largest value (1-based) counted by `hist`, and how many lie above it."""
    from_top = np.cumsum(hist[::-1])
    i = int(np.searchsorted(from_top, k))
    top_bin = len(hist) - 1 - i
    return top_bin, int(from_top[i] - hist[top_bin])


def _cutoff(unit_dirs: list[Path], lang: str, fraction: float) -> tuple[int, list] | None:
    """Where the language's first scored document is (rows before it), and its cut-off [-score, id]."""
    def scored(columns):
        for directory in unit_dirs:
            yield from _score_bits(iter_batches(directory / "kept", columns), lang)

    high = np.zeros(1 << LOW_BITS, np.int64)
    first, rows_before = None, 0
    for bits, _, first_in_batch in scored(["lang", "quality_score"]):
        high += np.bincount(bits >> LOW_BITS, minlength=1 << LOW_BITS)
        if first is None:
            rows_before += first_in_batch
            first = rows_before if len(bits) else None
    n = int(high.sum())
    if n == 0:
        return None
    k = max(1, math.ceil(fraction * n))
    top_high, above = _kth_bin(high, k)
    low = np.zeros(1 << LOW_BITS, np.int64)
    for bits, _, _ in scored(["lang", "quality_score"]):
        low += np.bincount(bits[(bits >> LOW_BITS) == top_high] & 0xFFFF, minlength=1 << LOW_BITS)
    top_low, above_low = _kth_bin(low, k - above)
    value = np.uint32((top_high << LOW_BITS) | top_low)
    tied = []
    for bits, rows, _ in scored(["id", "lang", "quality_score"]):
        rows = rows.filter(pa.array(bits == value))
        tied += zip(rows.column("id").to_pylist(), rows.column("quality_score").to_pylist())
    tied.sort()
    doc_id, score = tied[k - above - above_low - 1]     # its own score: 0.0 and -0.0 tie, keep its sign
    return first, [-score, doc_id]


def cutoffs(unit_dirs: list[Path], fractions: dict[str, float]) -> dict[str, list]:
    """Per language with scored documents, in order of their first one: [-score, id] of its last kept document."""
    found = [(c, lang) for lang, fraction in fractions.items() if (c := _cutoff(unit_dirs, lang, fraction))]
    return {lang: key for (_, key), lang in sorted(found)}


def apply_top_fraction(unit_dirs: list[Path], fractions: dict[str, float], run_units=None) -> None:
    """Cut-offs from every unit's scores (here), then each unit split by them: one task per unit
    through `run_units(fn, tasks)` (the pipeline's executor), inline without one."""
    state = unit_dirs[0].parent / "top_fraction.json" if unit_dirs else None
    if state is None:
        return
    if not state.is_file():
        atomic_write_json(state, cutoffs(unit_dirs, fractions))
    limits = {lang: tuple(key) for lang, key in read_json(state).items()}
    tasks = [(str(d), limits) for d in unit_dirs if not read_json(d / "stats.json").get(MARK)]
    if run_units is None:
        for task in tasks:
            split_unit(*task)
    else:
        run_units(split_unit, tasks)


def below_cutoff(table: pa.Table, limits: dict[str, tuple]) -> np.ndarray:
    """Rows ordered after their language's cut-off: lower score, or the same score and a larger id."""
    drop = np.zeros(table.num_rows, dtype=bool)
    score = table.column("quality_score").cast(pa.float64())
    for lang, (neg_score, last_id) in limits.items():
        worse = pc.or_(pc.less(score, -neg_score),
                       pc.and_(pc.equal(score, -neg_score), pc.greater(table.column("id"), last_id)))
        hit = pc.and_(pc.and_(pc.equal(table.column("lang"), lang), pc.greater_equal(score, 0.0)), worse)
        drop |= pc.fill_null(hit, False).to_numpy(zero_copy_only=False)
    return drop


def split_unit(directory: str, limits: dict[str, tuple]) -> None:
    directory = Path(directory)
    stats = read_json(directory / "stats.json")
    kept = read_table(directory / "kept")
    drop = below_cutoff(kept, limits)
    dropped = kept.filter(pa.array(drop))
    reasons = [f"{lang}:quality.top_fraction" for lang in dropped.column("lang").to_pylist()]
    quality = stats["stages"][-1]
    for reason in reasons:
        quality["excluded"][reason] = quality["excluded"].get(reason, 0) + 1
    quality["docs_out"] -= dropped.num_rows
    quality["bytes_out"] -= int(pc.sum(pc.binary_length(dropped.column("text"))).as_py() or 0)
    dropped = dropped.append_column("stage", pa.array(["quality"] * dropped.num_rows, pa.string())) \
        .append_column("reason", pa.array(reasons, pa.string()))
    excluded = pa.concat_tables([read_table(directory / "excluded" / "quality").cast(EXCLUDED_SCHEMA),
                                 dropped.select(EXCLUDED_SCHEMA.names).cast(EXCLUDED_SCHEMA)]).combine_chunks()
    with atomic_dir(directory, overwrite=True) as tmp:
        for sub in (directory / "excluded").iterdir():
            if sub.name != "quality":
                _copy_dir(sub, tmp / "excluded" / sub.name)
        _copy_dir(directory / "quarantine", tmp / "quarantine")
        write_table(tmp / "kept", kept.filter(pa.array(~drop)), prefix="part")
        write_table(tmp / "excluded" / "quality", excluded, prefix="part")
        atomic_write_json(tmp / "stats.json", {**stats, MARK: True})


def _copy_dir(src: Path, dst: Path) -> None:
    import shutil

    shutil.copytree(src, dst)
