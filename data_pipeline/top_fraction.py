"""Quality by rank: keep the top fraction of scored documents per language.

The cut-off needs every score, so it runs after all units of the segment are scored: it
computes one cut-off (score, id) per language, saves it, then splits each unit's kept shards
into kept and excluded. Each unit is rewritten atomically and marked, so an interrupted pass
resumes with the same cut-offs and skips the units already done.

Order: best score first, ties by smallest id. A language's cut-off is the k-th document in that
order, k = max(1, ceil(fraction * n)) of its n documents scored >= 0. It is found without holding
every score (a radix selection; each round is one pass over the units for all languages, reading
only the lang and quality_score columns, and id in the tie rounds):
  1. quality scores are float32, and a non-negative float32's bits sort like its value: count the
     documents per language and high 16 bits of the score (65536 bins per language);
  2. the same for the low 16 bits, within the high bin that holds the k-th: the k-th score is known,
     and how many documents tie on it;
  3. among the tied documents the cut-off is the j-th smallest id: when at most TIE_CAP documents tie,
     their ids are collected and sorted; otherwise each round counts them per next two bytes of the
     id (257 * 257 bins: end of id, or a byte) and keeps the bin that holds the j-th, until few enough
     remain (UTF-8 bytes sort like the strings' code points, the order pyarrow compares ids in).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stack_common.atomic import atomic_dir, atomic_write_json, read_json
from stack_common.shards import ShardCompression, iter_batches, read_table, write_table

from .schema import EXCLUDED_SCHEMA

MARK = "top_fraction_applied"
LOW_BITS = 16
TIE_CAP = 1 << 20       # tied ids collected and sorted at once; more are narrowed by id bytes first
SYMBOLS = 257           # per id byte: 0 = the id has ended, b + 1 = byte b


def _scored(unit_dirs: list[Path], langs: list[str], with_ids: bool = False
            ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, pa.Array | None, pa.Array]]:
    """Per batch of every unit, the rows scored >= 0 in one of `langs`: language index, float32 bits
    of the score (they sort like the scores), position among all rows, with `with_ids` their ids,
    and their scores."""
    value_set = pa.array(langs, pa.string())
    columns = ["lang", "quality_score"] + (["id"] if with_ids else [])
    rows_before = 0
    for directory in unit_dirs:
        for batch in iter_batches(directory / "kept", columns):
            code = pc.index_in(batch.column("lang"), value_set=value_set)
            score = batch.column("quality_score").cast(pa.float32())
            mine = pc.fill_null(pc.and_(pc.is_valid(code), pc.greater_equal(score, 0.0)), False)
            score = score.filter(mine)
            bits = (score.to_numpy(zero_copy_only=False) + np.float32(0.0)).view(np.uint32)  # -0.0 -> 0.0
            position = rows_before + np.flatnonzero(mine.to_numpy(zero_copy_only=False))
            ids = batch.column("id").filter(mine) if with_ids else None
            rows_before += batch.num_rows
            yield code.filter(mine).to_numpy(zero_copy_only=False).astype(np.int64), bits, position, ids, score


def _high_bins(unit_dirs: list[Path], langs: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per language: documents scored >= 0, by high 16 bits of the score; and the position (rows
    before it) of its first such document, for the order of the saved cut-offs."""
    high = np.zeros((len(langs), 1 << LOW_BITS), np.int64)
    first = np.full(len(langs), np.iinfo(np.int64).max)
    for codes, bits, position, _, _ in _scored(unit_dirs, langs):
        high += np.bincount(codes * (1 << LOW_BITS) + (bits >> LOW_BITS), minlength=high.size).reshape(high.shape)
        seen, at = np.unique(codes, return_index=True)
        first[seen] = np.minimum(first[seen], position[at])
    return high, first


def _kth_bin(hist: np.ndarray, k: int) -> tuple[int, int]:
    """The bin holding the k-th largest value (1-based) counted by `hist`, and how many lie above it."""
    from_top = np.cumsum(hist[::-1])
    i = int(np.searchsorted(from_top, k))
    top_bin = len(hist) - 1 - i
    return top_bin, int(from_top[i] - hist[top_bin])


def _id_bytes(ids: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Start and length of each id's UTF-8 bytes in the returned byte buffer (null: empty)."""
    ids = ids.cast(pa.large_binary())
    buffers = ids.buffers()
    offsets = np.frombuffer(buffers[1], np.int64)[ids.offset:ids.offset + len(ids) + 1]
    data = np.frombuffer(buffers[2], np.uint8) if buffers[2] is not None and buffers[2].size else np.zeros(1, np.uint8)
    return offsets[:-1], np.diff(offsets), data


def _symbol(ids: tuple[np.ndarray, np.ndarray, np.ndarray], pos: int) -> np.ndarray:
    """Per id: 0 when it ends before byte `pos`, else that byte + 1."""
    start, length, data = ids
    return np.where(length > pos, data[np.minimum(start + pos, len(data) - 1)].astype(np.int64) + 1, 0)


def _has_prefix(ids: tuple[np.ndarray, np.ndarray, np.ndarray], prefix: bytes) -> np.ndarray:
    match = np.ones(len(ids[0]), bool)
    for pos, b in enumerate(prefix):
        match &= _symbol(ids, pos) == b + 1
    return match


def _tied_ids(unit_dirs: list[Path], langs: list[str], ties: dict[int, dict]) -> dict[int, tuple[str, float]]:
    """Per language index in `ties` ({value: score bits, j, count: documents with those bits}):
    the id and score of the j-th smallest id among its documents scored `value`."""
    found: dict[int, tuple[str, float]] = {}
    for tie in ties.values():
        tie["prefix"] = b""
    while len(found) < len(ties):
        pending = {lang: tie for lang, tie in ties.items() if lang not in found}
        hist = {lang: np.zeros(SYMBOLS * SYMBOLS, np.int64) for lang, tie in pending.items() if tie["count"] > TIE_CAP}
        collected: dict[int, list] = {lang: [] for lang in pending if lang not in hist}
        for codes, bits, _, ids, scores in _scored(unit_dirs, langs, with_ids=True):
            for lang, tie in pending.items():
                rows = np.flatnonzero((codes == lang) & (bits == tie["value"]))
                if not len(rows):
                    continue
                mine = _id_bytes(ids.take(pa.array(rows)))
                rows = rows[_has_prefix(mine, tie["prefix"])]
                if lang in hist:
                    mine = _id_bytes(ids.take(pa.array(rows)))
                    pos = len(tie["prefix"])
                    hist[lang] += np.bincount(_symbol(mine, pos) * SYMBOLS + _symbol(mine, pos + 1),
                                              minlength=SYMBOLS * SYMBOLS)
                else:
                    collected[lang].append((ids.take(pa.array(rows)), scores.take(pa.array(rows))))
        for lang, parts in collected.items():
            ids = pa.concat_arrays([pa.array([], pa.string())] + [i.cast(pa.string()) for i, _ in parts])
            scores = pa.concat_arrays([pa.array([], pa.float32())] + [s for _, s in parts])
            pick = pc.sort_indices(ids)[ties[lang]["j"] - 1]
            found[lang] = (ids[pick.as_py()].as_py(), scores[pick.as_py()].as_py())
        for lang, counts in hist.items():
            tie = ties[lang]
            below = np.cumsum(counts)
            symbol = int(np.searchsorted(below, tie["j"]))
            tie["j"] -= int(below[symbol] - counts[symbol])
            tie["count"] = int(counts[symbol])
            first, second = divmod(symbol, SYMBOLS)
            if first == 0 or second == 0:       # the id ends here: every remaining candidate is this id
                tail = bytes([first - 1]) if first else b""
                score = float(np.array([tie["value"]], np.uint32).view(np.float32)[0])
                found[lang] = ((tie["prefix"] + tail).decode(), score)
            else:
                tie["prefix"] += bytes([first - 1, second - 1])
    return found


def cutoffs(unit_dirs: list[Path], fractions: dict[str, float]) -> dict[str, list]:
    """Per language with scored documents, in order of their first one: [-score, id] of its last kept document."""
    langs = list(fractions)
    high, first = _high_bins(unit_dirs, langs)
    k, top_high, above = {}, {}, {}
    for lang in range(len(langs)):
        n = int(high[lang].sum())
        if n:
            k[lang] = max(1, math.ceil(fractions[langs[lang]] * n))
            top_high[lang], above[lang] = _kth_bin(high[lang], k[lang])
    low = np.zeros((len(langs), 1 << LOW_BITS), np.int64)
    wanted = np.full(len(langs), -1, np.int64)
    wanted[list(top_high)] = list(top_high.values())
    for codes, bits, _, _, _ in _scored(unit_dirs, langs):
        hit = (bits >> LOW_BITS) == wanted[codes]
        low += np.bincount(codes[hit] * (1 << LOW_BITS) + (bits[hit] & 0xFFFF), minlength=low.size).reshape(low.shape)
    ties = {}
    for lang in k:
        top_low, above_low = _kth_bin(low[lang], k[lang] - above[lang])
        ties[lang] = {"value": np.uint32((top_high[lang] << LOW_BITS) | top_low),
                      "j": k[lang] - above[lang] - above_low, "count": int(low[lang][top_low])}
    found = _tied_ids(unit_dirs, langs, ties)
    # its own score: 0.0 and -0.0 tie, keep its sign
    return {langs[lang]: [-found[lang][1], found[lang][0]] for lang in sorted(found, key=lambda lang: first[lang])}


def apply_top_fraction(unit_dirs: list[Path], fractions: dict[str, float], run_units=None,
                       compression: ShardCompression = ShardCompression()) -> None:
    """Cut-offs from every unit's scores (here), then each unit split by them: one task per unit
    through `run_units(fn, tasks)` (the pipeline's executor), inline without one."""
    state = unit_dirs[0].parent / "top_fraction.json" if unit_dirs else None
    if state is None:
        return
    if not state.is_file():
        atomic_write_json(state, cutoffs(unit_dirs, fractions))
    limits = {lang: tuple(key) for lang, key in read_json(state).items()}
    tasks = [(str(d), limits, compression) for d in unit_dirs if not read_json(d / "stats.json").get(MARK)]
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


def split_unit(directory: str, limits: dict[str, tuple], compression: ShardCompression = ShardCompression()) -> None:
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
        write_table(tmp / "kept", kept.filter(pa.array(~drop)), prefix="part", compression=compression.codec())
        write_table(tmp / "excluded" / "quality", excluded, prefix="part", compression=compression.codec())
        atomic_write_json(tmp / "stats.json", {**stats, MARK: True})


def _copy_dir(src: Path, dst: Path) -> None:
    import shutil

    shutil.copytree(src, dst)
