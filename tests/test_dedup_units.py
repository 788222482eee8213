"""Small in-process tests of the dedup package's building blocks, with hand-computed numbers: each
kills mutants that the stage tests let survive (docs/testing.md, mutation testing)."""
import dataclasses
import hashlib
import json
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_pipeline.dedup import GLOBAL_STAGES, balance, common, exact, lines, minhash, semantic, text
from data_pipeline.dedup.order import range_key
from data_pipeline.schema import DOC_SCHEMA
from stack_common.errors import ConfigError
from stack_common.shards import ArrowWriter, ShardFile, read_table, sha256_file, write_manifest, write_table

REPO = Path(__file__).resolve().parents[1]


# ---- config checks ----------------------------------------------------------------------------------------

def _problems(check, conf):
    try:
        check(conf)
    except ConfigError as err:
        return err.problems
    return []


# (check_config, the config at every valid boundary, configs just past them -> the exact problems)
CONFIG_BOUNDS = [
    (semantic.check_config,
     semantic.SemanticConfig(dim=2, ngram_min=1, ngram_max=1, max_features=2, max_chars=1, fit_docs=2,
                             n_clusters=0, kmeans_iter=1, kmeans_docs=2, memory_budget_mb=1e-9, threshold=1.0,
                             compare="embedding"),
     [({"dim": 1, "ngram_min": 0, "ngram_max": 0, "max_features": 0, "max_chars": 0, "fit_docs": 1,
        "n_clusters": -1, "kmeans_iter": 0, "kmeans_docs": 1, "memory_budget_mb": 0, "threshold": 0.0,
        "compare": "words"},
       ["dedup.semantic.dim: must be at least 2", "dedup.semantic.ngram_min/ngram_max: 1 <= min <= max",
        "dedup.semantic.max_features: must be at least dim", "dedup.semantic.max_chars: must be positive",
        "dedup.semantic.fit_docs: must be at least 2",
        "dedup.semantic.n_clusters: 0 (automatic) or a positive number",
        "dedup.semantic.kmeans_iter: must be positive", "dedup.semantic.kmeans_docs: must be at least 2",
        "dedup.semantic.memory_budget_mb: must be positive", "dedup.semantic.threshold: cosine similarity in (0, 1]",
        "dedup.semantic.compare: 'words' is not one of tfidf, embedding"]),
      ({"ngram_min": 2, "max_features": 1, "threshold": 1.001},
       ["dedup.semantic.ngram_min/ngram_max: 1 <= min <= max", "dedup.semantic.max_features: must be at least dim",
        "dedup.semantic.threshold: cosine similarity in (0, 1]"])]),
    (minhash.check_config,
     minhash.MinHashConfig(num_perm=2, shingle="tokens", ngram=1, threshold=1.0, lsh_weights=[0.25, 0.75],
                           bands=1, rows=2, memory_budget_mb=1e-9, bucket_window=1),
     [({"num_perm": 1, "shingle": "words", "ngram": 0, "threshold": 0.0, "lsh_weights": [0.5, 0.4], "rows": 0,
        "memory_budget_mb": 0, "bucket_window": 0},
       ["dedup.minhash.num_perm: must be at least 2", "dedup.minhash.shingle: 'words' is not one of chars, tokens",
        "dedup.minhash.ngram: must be at least 1", "dedup.minhash.threshold: must be in (0, 1]",
        "dedup.minhash.lsh_weights: two weights that sum to 1", "dedup.minhash.bands/rows: set both or neither",
        "dedup.minhash.memory_budget_mb: must be positive", "dedup.minhash.bucket_window: must be positive"]),
      ({"threshold": 1.001, "lsh_weights": [1.0], "bands": 0, "rows": 3},
       ["dedup.minhash.threshold: must be in (0, 1]", "dedup.minhash.lsh_weights: two weights that sum to 1",
        "dedup.minhash.bands/rows: set both or neither"]),
      ({"bands": 3, "rows": 1}, ["dedup.minhash.bands * rows: must be <= num_perm"])]),
    (exact.check_config, exact.ExactConfig(digest_bytes=8, memory_budget_mb=1e-9),
     [({"digest_bytes": 7, "memory_budget_mb": 0},
       ["dedup.exact.digest_bytes: must be in [8, 64]", "dedup.exact.memory_budget_mb: must be positive"]),
      ({"digest_bytes": 65}, ["dedup.exact.digest_bytes: must be in [8, 64]"])]),
    (lines.check_config, lines.LineConfig(unit="sentence", min_count=2, min_unit_chars=1, memory_budget_mb=1e-9),
     [({"unit": "word", "min_count": 1, "min_unit_chars": 0, "memory_budget_mb": 0},
       ["dedup.line.unit: 'word' is not one of paragraph, sentence", "dedup.line.min_count: must be at least 2",
        "dedup.line.min_unit_chars: must be at least 1", "dedup.line.memory_budget_mb: must be positive"])]),
    (balance.check_config,
     balance.BalanceConfig(max_per_cluster=0, cap_factor=1e-9, keep="random", top_terms=0, memory_budget_mb=1e-9),
     [({"max_per_cluster": -1, "cap_factor": 0, "keep": "best", "top_terms": -1, "memory_budget_mb": 0},
       ["dedup.balance.max_per_cluster: 0 (from cap_factor) or positive", "dedup.balance.cap_factor: must be positive",
        "dedup.balance.keep: 'best' is not one of quality, random", "dedup.balance.top_terms: must be >= 0",
        "dedup.balance.memory_budget_mb: must be positive"])]),
]


@pytest.mark.parametrize("check,valid,invalid", CONFIG_BOUNDS, ids=["semantic", "minhash", "exact", "line", "balance"])
def test_config_checks_accept_each_boundary_and_name_every_value_past_it(check, valid, invalid):
    assert _problems(check, valid) == []
    for change, problems in invalid:
        assert _problems(check, dataclasses.replace(valid, **change)) == problems, change


# ---- survivor order ---------------------------------------------------------------------------------------

def _meta(quality, n_chars):
    return pa.table({"quality_score": pa.array(quality, pa.float32()), "n_chars": pa.array(n_chars, pa.int64())})


def test_range_key_orders_quality_desc_nulls_last_then_length_desc():
    meta = _meta([0.5, None, 0.9, 0.5, -0.0, 0.0, -1.0, 0.9], [10, 10, 10, 20, 5, 5, 3, 2 ** 40])
    keys = range_key(meta)
    assert keys.dtype == np.uint64
    # 0.9 (longest first; 2**40 chars caps at 2**32 - 1), 0.5 (20 then 10), 0.0 = -0.0, -1.0, null
    assert np.argsort(keys, kind="stable").tolist() == [7, 2, 3, 0, 4, 5, 6, 1]
    assert keys[4] == keys[5]
    assert int(keys[7]) & 0xFFFFFFFF == 0 and int(keys[2]) & 0xFFFFFFFF == 0xFFFFFFFF - 10
    assert int(keys[1]) >> 32 == 0xFFFFFFFF


# ---- partitions ------------------------------------------------------------------------------------------

def test_key_range_cuts_the_64_bit_key_space_into_equal_ranges():
    q = 2 ** 62
    keys = np.array([0, q - 1, q, 2 * q, 3 * q - 1, 3 * q, 2 ** 64 - 1], np.uint64)
    assert [lines.key_range(keys, p, 4) for p in range(4)] == [(0, 2), (2, 3), (3, 5), (5, 7)]
    assert lines.key_range(keys, 0, 1) == (0, 7)
    third = (1 << 64) // 3          # 6148914691236517205: the first key of partition 1 of 3
    keys = np.array([third - 1, third, 2 * third - 1, 2 * third], np.uint64)
    assert [lines.key_range(keys, p, 3) for p in range(3)] == [(0, 1), (1, 3), (3, 4)]


def test_root_range_gives_ranges_of_equal_width_over_the_ranks():
    assert common.root_range(np.arange(10), 10, 3).tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert common.root_range(np.array([0, 5, 9]), 10, 1).tolist() == [0, 0, 0]
    assert common.root_range(np.array([0]), 0, 4).tolist() == [0]


def test_hash_partition_is_the_high_word_of_a_multiplicative_hash():
    values = np.array([0, 1, 2, 2 ** 63], np.uint64)
    mixed = [(v * 0x9E3779B97F4A7C15) % 2 ** 64 for v in (0, 1, 2, 2 ** 63)]
    assert common.hash_partition(values, 7).tolist() == [(m >> 32) % 7 for m in mixed]
    assert common.hash_partition(values, 1).tolist() == [0, 0, 0, 0]
    a, b = np.array([3, 3, 2 ** 40], np.int64), np.array([5, 6, 5], np.int64)
    mixed_pairs = np.array([(x * 0x9E3779B97F4A7C15) % 2 ** 64 ^ y for x, y in ((3, 5), (3, 6), (2 ** 40, 5))],
                           np.uint64)
    assert common.pair_partition(a, b, 7).tolist() == common.hash_partition(mixed_pairs, 7).tolist()


def test_column_numpy_reads_every_chunk():
    table = pa.Table.from_batches([pa.record_batch({"x": [1, 2]}), pa.record_batch({"x": [3]})])
    assert common.column_numpy(table, "x").tolist() == [1, 2, 3]
    assert common.column_numpy(table.combine_chunks(), "x").tolist() == [1, 2, 3]


# ---- minhash ----------------------------------------------------------------------------------------------

def test_jaccard_of_sorted_sets_counts_the_shared_values_once():
    a, b = np.array([1, 2, 3, 9], np.uint32), np.array([2, 9], np.uint32)
    assert minhash.jaccard_sorted(a, b) == minhash.jaccard_sorted(b, a) == 2 / 4
    assert minhash.jaccard_sorted(np.array([10], np.uint32), np.array([1, 5], np.uint32)) == 0.0
    assert minhash.jaccard_sorted(np.array([5], np.uint32), np.array([1, 5], np.uint32)) == 1 / 2
    assert minhash.jaccard_sorted(np.zeros(0, np.uint32), b) == minhash.jaccard_sorted(b, np.zeros(0, np.uint32)) == 0.0


def test_band_keys_fold_each_bands_rows_into_one_64_bit_key():
    sig = np.array([[3, 5, 7, 11], [3, 5, 8, 11]], np.uint32)

    def key(band, values):
        k = band + 1
        for v in values:
            k = ((k ^ v) * 0x100000001B3) % 2 ** 64
        return k ^ (k >> 29)

    keys = minhash.band_keys(sig, 2, 2)
    assert keys.dtype == np.uint64
    assert keys.tolist() == [[key(0, [3, 5]), key(1, [7, 11])], [key(0, [3, 5]), key(1, [8, 11])]]
    assert minhash.band_keys(sig[:, :3], 1, 3).tolist() == [[key(0, [3, 5, 7])], [key(0, [3, 5, 8])]]


def test_token_shingles_of_a_text_shorter_than_n_are_one_hash_of_it_all():
    assert len(text.shingle_hashes("one two three", 5)) == 1
    assert len(text.shingle_hashes("one two three four five", 5)) == 1
    assert len(text.shingle_hashes("one two three four five six", 5)) == 2
    assert text.shingle_hashes("one two three", 5).tolist() == text.shingle_hashes("One, two; THREE!", 5).tolist()


# ---- cluster balance --------------------------------------------------------------------------------------

def test_cluster_of_reads_only_a_non_negative_integer_cluster_id():
    cases = {'{"cluster_id": 3}': 3, '{"cluster_id": 0}': 0, '{"cluster_id": -1}': -1, '{"cluster_id": true}': -1,
             '{"cluster_id": "3"}': -1, '{"cluster_id": 2.0}': -1, '{"other": 1}': balance.NO_ANNOTATION,
             '[{"cluster_id": 1}]': balance.NO_ANNOTATION, "{not json": balance.NO_ANNOTATION,
             "": balance.NO_ANNOTATION, None: balance.NO_ANNOTATION}
    assert {raw: balance.cluster_of(raw) for raw in cases} == cases


def test_cap_is_the_fixed_one_or_cap_factor_times_the_median_at_least_one():
    conf = balance.BalanceConfig
    assert balance.cap_of(np.array([10, 3, 2, 1]), conf()) == 5                 # ceil(2 x 2.5)
    assert balance.cap_of(np.array([10, 3, 2, 1]), conf(cap_factor=1.5)) == 4   # ceil(3.75)
    assert balance.cap_of(np.array([1, 1, 3]), conf(cap_factor=0.5)) == 1
    assert balance.cap_of(np.array([1, 1, 3]), conf(cap_factor=0.1, max_per_cluster=7)) == 7
    assert balance.cap_of(np.zeros(0, np.int64), conf()) == 1


def test_place_in_group_counts_along_runs():
    assert balance.place_in_group(np.array([4, 4, 7, 9, 9, 9])).tolist() == [0, 1, 0, 0, 1, 2]
    assert balance.place_in_group(np.array([5])).tolist() == [0]
    assert balance.place_in_group(np.zeros(0, np.int64)).tolist() == []


def test_terms_and_their_partition_and_the_random_keep_order():
    assert balance.doc_terms("The Kubernetes cluster's nodes, an API of 数据中心 and 云") == {
        "kubernetes", "cluster's", "nodes", "api", "数据", "据中", "中心"}
    assert balance.term_partition(["kubernetes", "数据"], 7).tolist() == [
        zlib.crc32(b"kubernetes") % 7, zlib.crc32("数据".encode()) % 7]
    digest = lambda s: int.from_bytes(hashlib.blake2b(s, digest_size=8).digest(), "little")  # noqa: E731
    assert balance.random_keys(["a", "b"], 3).tolist() == [digest(b"3\0a"), digest(b"3\0b")]


# ---- semantic ---------------------------------------------------------------------------------------------

def test_greedy_dedup_removes_only_above_the_threshold_as_a_copy_of_the_most_similar_kept():
    sims = np.array([[1.0, 0.9, 0.5, 0.80, 0.2],
                     [0.9, 1.0, 0.95, 0.7, 0.2],
                     [0.5, 0.95, 1.0, 0.6, 0.2],
                     [0.80, 0.7, 0.6, 1.0, 0.85],
                     [0.2, 0.2, 0.2, 0.85, 1.0]], np.float32)
    block = lambda lo, hi: sims[lo:hi, :hi]  # noqa: E731
    for size in (1, 2, 1024):
        dup, sim = semantic.greedy_dedup(5, block, 0.8, block=size)
        # 1 copies 0 (0.9); 2 is 0.95 like 1, which is gone, and 0.5 like 0: kept; 3 is exactly 0.8: kept;
        # 4 is 0.85 like 3: removed.
        assert dup.tolist() == [-1, 0, -1, -1, 3], size
        assert sim.tolist() == pytest.approx([0, 0.9, 0, 0, 0.85])


def test_assign_picks_the_nearest_centroid_by_cosine_whatever_its_length():
    vectors = np.array([[1, 0], [0.6, 0.8], [0, 1]], np.float32)
    centroids = np.array([[3, 0], [0, 0.5]], np.float32)         # not unit length
    cluster, distance = semantic.assign(vectors, centroids)
    assert cluster.tolist() == [0, 1, 1]
    assert distance.tolist() == pytest.approx([0.0, 0.2, 0.0])


def test_add_annotations_keeps_what_was_there():
    assert json.loads(common.add_annotations('{"a": 1}', {"b": 2})) == {"a": 1, "b": 2}
    assert json.loads(common.add_annotations(None, {"b": 2})) == {"b": 2}
    assert json.loads(common.add_annotations("[1]", {"b": 2})) == {"annotations": [1], "b": 2}
    assert json.loads(common.add_annotations("{bad", {"b": 2})) == {"unparsed_annotations": "{bad", "b": 2}
    assert common.add_annotations("", {"重复": "是"}) == '{"重复": "是"}'


def test_kmeans_centroids_are_unit_length_spherical_ones():
    rng = np.random.default_rng(0)
    vectors = np.concatenate([rng.normal([5, 0, 0], 0.1, (20, 3)), rng.normal([0, 3, 0], 0.1, (20, 3))])
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    centroids = semantic.kmeans(vectors, 2, 10, 0)
    assert np.linalg.norm(centroids, axis=1) == pytest.approx([1.0, 1.0], abs=1e-5)
    assert sorted(semantic.assign(vectors, centroids)[0][[0, 20]].tolist()) == [0, 1]


# ---- a tiny MinHash run ---------------------------------------------------------------------------------

def test_documents_without_shingles_get_no_band_keys_so_no_candidates(tmp_path):
    sentence = "Every near copy of this sentence shares most of its character shingles with it."
    docs = [{"id": i, "text": t, "lang": "en", "source": "test", "quality_score": q, "annotations": "{}"}
            for i, t, q in [("a", sentence, 0.9), ("b", sentence.replace("most", "many"), 0.5), ("e1", "", 0.5),
                            ("e2", "  \n ", 0.5), ("e3", "", None)]]
    write_table(tmp_path / "in", pa.Table.from_pylist(docs, schema=DOC_SCHEMA))
    stats = minhash.run(tmp_path / "in", tmp_path / "out", {"threshold": 0.5})
    # one candidate pair (a, b), verified; the three texts without a shingle are never banded
    assert (stats["docs_without_shingles"], stats["candidate_pairs"], stats["verified_pairs"]) == (3, 1, 1)
    assert stats["excluded"] == {"near_duplicate": 1} and stats["order_ranges"] == 1
    assert stats["stage"] == "minhash_dedup" and json.loads((tmp_path / "out" / "stats.json").read_text()) == stats


# ---- an input shard without rows ----------------------------------------------------------------------

def test_every_stage_passes_an_input_shard_without_rows(tmp_path):
    """A shard file with no record batch (a writer that got no rows still leaves its file) is read as
    empty by every stage, not as a file without columns."""
    en = pq.read_table(REPO / "data/sample/en.parquet").to_pylist()[:8]
    docs = [{"id": f"en{i}", "text": r["text"], "lang": "en", "source": "test", "quality_score": 0.5,
             "annotations": json.dumps({"cluster_id": i % 2})} for i, r in enumerate(en)]
    files = write_table(tmp_path / "in", pa.Table.from_pylist(docs, schema=DOC_SCHEMA))
    empty = tmp_path / "in" / "shard-99999.arrow"
    with ArrowWriter(empty, DOC_SCHEMA, single_file=True):
        pass
    write_manifest(tmp_path / "in", [files[0], ShardFile(empty.name, 0, empty.stat().st_size, sha256_file(empty))],
                   DOC_SCHEMA)
    for stage, cfg, src in [("exact_dedup", {}, "in"), ("minhash_dedup", {}, "in"), ("line_dedup", {}, "in"),
                            ("semantic_dedup", {"dim": 4}, "in"), ("cluster_balance", {}, "in")]:
        stats = GLOBAL_STAGES[stage](tmp_path / src, tmp_path / stage, cfg, 1, "local", None)
        assert (stats["docs_in"], stats["docs_out"]) == (8, 8), stage
    assert stats["cap"] == 8 and stats["clusters"] == 2        # cluster_balance: sizes 4 and 4, cap 2 x 4
    semantic_stats = json.loads((tmp_path / "semantic_dedup" / "stats.json").read_text())
    variance = semantic_stats["explained_variance"]             # stats.json rounds it to 4 digits
    assert semantic_stats["dim"] == 4 and 0 < variance < 1 and variance == round(variance, 4)


# ---- line dedup over a shard of several record batches ---------------------------------------------------

def test_line_dedup_finds_a_too_short_keeper_in_a_later_record_batch(tmp_path):
    x = "Subscribe to our newsletter for the latest updates and offers."
    y = "All rights reserved by the example company and its partners."

    def doc(name, lines, quality):
        body = f"Document {name} has a body of its own, " + " ".join(f"{name}-word{i}" for i in range(40))
        text = "\n".join(lines + ([body] if name != "k" else [])) + "\n"
        return {"id": name, "text": text, "lang": "en", "source": "test", "quality_score": quality,
                "annotations": "{}"}

    # k holds x and y only: it keeps x (best holder) but loses y to z, which leaves it too short, so x
    # goes to the next holder, p. k is in the shard's second record batch.
    first = [doc("z", [y], 0.95), doc("p", [x], 0.8), doc("q", [x], 0.7)]
    second = [doc("k", [x, y], 0.9), doc("r", [y], 0.6)]
    with ArrowWriter(tmp_path / "in", DOC_SCHEMA) as writer:
        for rows in (first, second):
            writer.write(pa.Table.from_pylist(rows, schema=DOC_SCHEMA))
    assert pa.ipc.open_file(tmp_path / "in" / "shard-00000.arrow").num_record_batches == 2
    stats = lines.run(tmp_path / "in", tmp_path / "out", {"min_doc_chars": 200})
    kept = {r["id"]: r["text"] for r in read_table(tmp_path / "out" / "kept").to_pylist()}
    assert sorted(kept) == ["p", "q", "r", "z"] and stats["excluded"] == {"too_short_after_line_dedup": 1}
    assert [x in kept[d] for d in "pqrz"] == [True, False, False, False]
    assert [y in kept[d] for d in "pqrz"] == [False, False, False, True]
