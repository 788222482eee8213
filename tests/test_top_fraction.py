"""quality.mode=top_fraction: per-language cut-offs by radix selection equal a full sort of (-score, id)."""
import json
import math
import random

import numpy as np
import pyarrow as pa
import pytest

from data_pipeline.schema import DOC_SCHEMA, EXCLUDED_SCHEMA
import data_pipeline.top_fraction as top_fraction
from data_pipeline.top_fraction import MARK, apply_top_fraction, cutoffs
from stack_common.shards import read_table, write_table


def sorted_cutoffs(unit_dirs, fractions):
    """The definition: sort every (-score, id) of a language, take the ceil(fraction * n)-th."""
    keys = {}
    for directory in unit_dirs:
        for row in read_table(directory / "kept").to_pylist():
            if row["lang"] in fractions and row["quality_score"] is not None and row["quality_score"] >= 0:
                keys.setdefault(row["lang"], []).append((-row["quality_score"], row["id"]))
    return {lang: list(sorted(k)[max(1, math.ceil(fractions[lang] * len(k))) - 1]) for lang, k in keys.items()}


def _units(root, n_units=4, per_unit=300, seed=5):
    """Units of documents whose scores tie a lot (a few values), spread (random float32), or do not
    count (negative, NaN, null); ids are not in score order."""
    rng = random.Random(seed)
    few = [0.0, -0.0, 0.25, 0.5, 0.5000001, 0.75, 1.0]
    dirs = []
    for u in range(n_units):
        rows = []
        for i in range(per_unit):
            lang = rng.choice(["en", "en", "zh", "zh", "fr"])
            pick = rng.random()
            score = (rng.choice(few) if pick < 0.5 else rng.random() if pick < 0.85 else
                     rng.choice([-1.0, float("nan"), None]))
            rows.append({"id": f"{rng.randrange(10 ** 6):06d}-{u}-{i}", "text": "é" * rng.randint(1, 9), "lang": lang,
                         "source": "t", "quality_score": score, "annotations": "{}"})
        d = root / f"unit-{u}"
        write_table(d / "kept", pa.Table.from_pylist(rows, schema=DOC_SCHEMA), prefix="part", target_bytes=2000)
        previous = [{**rows[0], "stage": "quality", "reason": "en:quality.threshold"}]
        write_table(d / "excluded" / "quality", pa.Table.from_pylist(previous, schema=EXCLUDED_SCHEMA), prefix="part")
        write_table(d / "excluded" / "filter", pa.Table.from_pylist([], schema=EXCLUDED_SCHEMA), prefix="part")
        write_table(d / "quarantine", pa.Table.from_pylist([], schema=DOC_SCHEMA), prefix="part")
        stats = {"stages": [{"stage": "quality", "docs_out": len(rows), "bytes_out": sum(len(r["text"].encode())
                                                                                        for r in rows),
                             "excluded": {"en:quality.threshold": 1}}]}
        (d / "stats.json").write_text(json.dumps(stats))
        dirs.append(d)
    return dirs


def _tied_units(root, n=600, seed=11):
    """Two units where every en document scores 1.0 (a saturated classifier): ids share prefixes,
    end inside others' prefixes, repeat, and hold multi-byte characters."""
    rng = random.Random(seed)
    stems = ["doc-", "doc-1", "doc-1é", "doc-é", "x", "doc-10", "ä文"]
    dirs = []
    for u in range(2):
        rows = [{"id": rng.choice(stems) + "".join(rng.choice("01é") for _ in range(rng.randint(0, 3))),
                 "text": "t", "lang": rng.choice(["en", "en", "zh"]), "source": "t",
                 "quality_score": 1.0 if rng.random() < 0.9 else rng.random(), "annotations": "{}"} for _ in range(n)]
        write_table(root / f"u{u}" / "kept", pa.Table.from_pylist(rows, schema=DOC_SCHEMA), target_bytes=3000)
        dirs.append(root / f"u{u}")
    return dirs


@pytest.mark.parametrize("cap", [1, 7, 10 ** 6])
def test_tied_ids_are_narrowed_by_their_bytes_not_collected(tmp_path, monkeypatch, cap):
    """More tied documents than TIE_CAP: the j-th id is selected by rounds over two id bytes each,
    holding at most TIE_CAP ids (cap 1 ends on a run of equal ids); the result is the full sort's."""
    dirs = _tied_units(tmp_path)
    collected = []
    concat = pa.concat_arrays
    monkeypatch.setattr(top_fraction, "TIE_CAP", cap)
    monkeypatch.setattr(pa, "concat_arrays", lambda arrays: collected.append(len(out := concat(arrays))) or out)
    for fraction in (0.01, 0.37, 0.5, 0.93, 1.0):
        fractions = {"en": fraction, "zh": 1 - fraction / 3}
        assert cutoffs(dirs, fractions) == sorted_cutoffs(dirs, fractions)
    assert max(collected) <= cap if cap < 10 ** 6 else max(collected) > 400


@pytest.mark.parametrize("fraction", [0.001, 0.3, 0.999, 1.0])
def test_cutoffs_equal_a_full_sort_with_ties(tmp_path, fraction):
    dirs = _units(tmp_path)
    fractions = {"zh": 1 - fraction / 2, "de": 0.5, "en": fraction}       # no de documents: no cut-off
    expected = sorted_cutoffs(dirs, fractions)
    assert set(expected) == {"en", "zh"}
    assert json.dumps(cutoffs(dirs, fractions)) == json.dumps(expected)   # languages in order of first document


def test_cutoff_falls_inside_a_tie_and_is_broken_by_id(tmp_path):
    rows = [{"id": i, "text": "x", "lang": "en", "source": "t", "quality_score": s, "annotations": "{}"}
            for i, s in [("b", 0.5), ("a", 0.5), ("d", 0.9), ("c", 0.5), ("e", 0.1)]]
    write_table(tmp_path / "u" / "kept", pa.Table.from_pylist(rows, schema=DOC_SCHEMA))
    assert cutoffs([tmp_path / "u"], {"en": 0.6}) == {"en": [-0.5, "b"]}     # 3 of 5: d, then a, b of the tie
    assert cutoffs([tmp_path / "u"], {"en": 0.2}) == {"en": [-np.float32(0.9).item(), "d"]}


def test_split_keeps_the_documents_up_to_the_cutoff(tmp_path):
    dirs = _units(tmp_path)
    fractions = {"en": 0.3, "zh": 0.7}
    before = {d: read_table(d / "kept").to_pylist() for d in dirs}
    limits = {lang: tuple(key) for lang, key in sorted_cutoffs(dirs, fractions).items()}
    apply_top_fraction(dirs, fractions)
    assert {k: tuple(v) for k, v in json.loads((tmp_path / "top_fraction.json").read_text()).items()} == limits
    kept_counts = {"en": 0, "zh": 0}
    for d in dirs:
        def dropped(r):
            return (r["lang"] in limits and r["quality_score"] is not None and r["quality_score"] >= 0
                    and (-r["quality_score"], r["id"]) > limits[r["lang"]])
        rows = before[d]
        kept = read_table(d / "kept").to_pylist()
        assert [r["id"] for r in kept] == [r["id"] for r in rows if not dropped(r)]
        excluded = read_table(d / "excluded" / "quality").to_pylist()
        gone = [r for r in rows if dropped(r)]
        assert [(r["id"], r["reason"]) for r in excluded] == [(rows[0]["id"], "en:quality.threshold")] + \
            [(r["id"], f"{r['lang']}:quality.top_fraction") for r in gone]
        stats = json.loads((d / "stats.json").read_text())
        assert stats[MARK] and stats["stages"][-1]["docs_out"] == len(kept)
        assert stats["stages"][-1]["bytes_out"] == sum(len(r["text"].encode()) for r in kept)
        assert stats["stages"][-1]["excluded"] == {"en:quality.threshold": 1, **{
            f"{lang}:quality.top_fraction": n for lang in dict.fromkeys(r["lang"] for r in gone)
            for n in [sum(r["lang"] == lang for r in gone)]}}
        assert (d / "excluded" / "filter").is_dir() and (d / "quarantine").is_dir()
        for r in kept:
            if r["lang"] in kept_counts and r["quality_score"] is not None and r["quality_score"] >= 0:
                kept_counts[r["lang"]] += 1
    scored = {lang: sum(1 for rows in before.values() for r in rows if r["lang"] == lang
                        and r["quality_score"] is not None and r["quality_score"] >= 0) for lang in fractions}
    assert kept_counts == {lang: math.ceil(fractions[lang] * scored[lang]) for lang in fractions}
