"""bench/bench_scale.py: the planted-duplicate scores a dedup stage gets, and the line splice that
makes the corpus's originals (neither needs ../shared/corpus)."""
import importlib.util
import random
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa

from stack_common.shards import write_table

REPO = Path(__file__).resolve().parents[1]


def load_bench():
    sys.path.insert(0, str(REPO / "bench"))
    spec = importlib.util.spec_from_file_location("bench_scale", REPO / "bench" / "bench_scale.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_ids(directory: Path, positions: list[int]) -> None:
    write_table(directory, pa.table({"id": [f"d{p:010d}" for p in positions]}))


def test_planted_scores_count_each_kind_of_removal(tmp_path):
    bench = load_bench()
    O, E, N = bench.ORIGINAL, bench.EXACT, bench.NEAR
    # 0 original A, 1 exact copy of A, 2 near copy of A (truth 0.9), 3 near copy of A (0.5),
    # 4 original B (filtered before the stage), 5 exact copy of B, 6 original C (no copy),
    # 7 near copy of B (0.85)
    truth = {"family": np.array([0, 0, 0, 0, 4, 4, 6, 4]),
             "role": np.array([O, E, N, N, O, E, O, N], np.int8),
             "jaccard": np.array([np.nan, np.nan, 0.9, 0.5, np.nan, np.nan, np.nan, 0.85], np.float32)}
    write_ids(tmp_path / "kept", [0, 5, 7])
    write_ids(tmp_path / "excluded", [1, 2, 3, 6])
    scores = bench.planted_scores(tmp_path, truth)
    assert scores == {
        "docs_in": 7, "removed": 4,
        "removed_planted": 2,                     # 1 (A again), 2 (true near copy of A, A in)
        "removed_same_family_no_truth_pair": 1,   # 3: below the truth threshold
        "removed_unplanted": 1,                   # 6: no family
        "precision": 0.5,
        "exact_expected_removals": 1, "exact_recall": 1.0,   # B's text entered once (as 5)
        "near_pairs_in": 2, "near_recall": 0.5,              # 2 caught, 7 (with 5) missed
    }


def test_near_pair_counts_as_caught_when_its_original_goes_instead(tmp_path):
    bench = load_bench()
    truth = {"family": np.array([0, 0]), "role": np.array([bench.ORIGINAL, bench.NEAR], np.int8),
             "jaccard": np.array([np.nan, 0.95], np.float32)}
    write_ids(tmp_path / "kept", [1])
    write_ids(tmp_path / "excluded", [0])
    scores = bench.planted_scores(tmp_path, truth)
    assert (scores["near_recall"], scores["precision"], scores["removed_planted"]) == (1.0, 1.0, 1)


def test_splice_keeps_the_layout_and_a_real_line_ending():
    bench = load_bench()
    pool = ["the quick brown fox jumps over the lazy dog.", "pack my box with five dozen liquor jugs!"]
    rng = random.Random(3)
    line = "    Sphinx builds the documentation from reStructuredText sources."
    out = bench.splice(line, pool, rng)
    assert out.startswith("    Sphinx ") and out != line
    assert out.endswith(("dog.", "jugs!"))
    assert abs(len(out) - len(line)) <= max(len(p) for p in pool)
    assert bench.splice("  abc", pool, rng) == "  abc"      # under 4 characters: left as it is
    zh = bench.splice("软件包缓存复制到另一台主机上", ["只传输对方还没有的文件。"], random.Random(0))
    assert zh.endswith("。") and zh[:2] == "软件"


def test_removing_an_exact_copy_does_not_catch_a_near_copy(tmp_path):
    bench = load_bench()
    truth = {"family": np.array([0, 0, 0]), "role": np.array([bench.ORIGINAL, bench.EXACT, bench.NEAR], np.int8),
             "jaccard": np.array([np.nan, np.nan, 0.95], np.float32)}
    write_ids(tmp_path / "kept", [0, 2])
    write_ids(tmp_path / "excluded", [1])
    scores = bench.planted_scores(tmp_path, truth)
    assert (scores["exact_recall"], scores["near_pairs_in"], scores["near_recall"]) == (1.0, 1, 0.0)
