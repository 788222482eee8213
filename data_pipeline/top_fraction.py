"""Quality by rank: keep the top fraction of scored documents per language.

The cut-off needs every score, so it runs after all units of the segment are scored: it
computes one cut-off (score, id) per language, saves it, then splits each unit's kept shards
into kept and excluded. Each unit is rewritten atomically and marked, so an interrupted pass
resumes with the same cut-offs and skips the units already done.
"""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import pyarrow as pa

from stack_common.atomic import atomic_dir, atomic_write_json, read_json
from stack_common.shards import read_table, write_table

from .schema import EXCLUDED_SCHEMA

MARK = "top_fraction_applied"


def _order_key(score: float, doc_id: str) -> tuple:
    return (-score, doc_id)   # best first; ties broken by id so the choice is deterministic


def cutoffs(unit_dirs: list[Path], fractions: dict[str, float]) -> dict[str, list]:
    keys = defaultdict(list)
    for directory in unit_dirs:
        table = read_table(directory / "kept", columns=["id", "lang", "quality_score"])
        for doc_id, lang, score in zip(*(table.column(c).to_pylist() for c in ("id", "lang", "quality_score"))):
            if lang in fractions and score >= 0:
                keys[lang].append(_order_key(score, doc_id))
    result = {}
    for lang, lang_keys in keys.items():
        lang_keys.sort()
        keep = max(1, math.ceil(fractions[lang] * len(lang_keys)))
        result[lang] = list(lang_keys[keep - 1])
    return result


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


def split_unit(directory: str, limits: dict[str, tuple]) -> None:
    directory = Path(directory)
    stats = read_json(directory / "stats.json")
    kept = read_table(directory / "kept")
    rows = kept.to_pylist()
    keep_mask = [not (r["lang"] in limits and r["quality_score"] >= 0
                      and _order_key(r["quality_score"], r["id"]) > limits[r["lang"]]) for r in rows]
    dropped = [r for r, keep in zip(rows, keep_mask) if not keep]
    quality = stats["stages"][-1]
    for r in dropped:
        reason = f"{r['lang']}:quality.top_fraction"
        quality["excluded"][reason] = quality["excluded"].get(reason, 0) + 1
        quality["docs_out"] -= 1
        quality["bytes_out"] -= len(r["text"].encode("utf-8"))
    previous_excluded = read_table(directory / "excluded" / "quality").to_pylist()
    new_excluded = previous_excluded + [{**r, "stage": "quality", "reason": f"{r['lang']}:quality.top_fraction"}
                                        for r in dropped]
    with atomic_dir(directory, overwrite=True) as tmp:
        for sub in (directory / "excluded").iterdir():
            if sub.name != "quality":
                _copy_dir(sub, tmp / "excluded" / sub.name)
        _copy_dir(directory / "quarantine", tmp / "quarantine")
        write_table(tmp / "kept", kept.filter(pa.array(keep_mask)), prefix="part")
        write_table(tmp / "excluded" / "quality", pa.Table.from_pylist(new_excluded, schema=EXCLUDED_SCHEMA), prefix="part")
        atomic_write_json(tmp / "stats.json", {**stats, MARK: True})


def _copy_dir(src: Path, dst: Path) -> None:
    import shutil

    shutil.copytree(src, dst)
