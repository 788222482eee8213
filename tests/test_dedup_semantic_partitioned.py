"""semantic_dedup and cluster_balance out of core: the output does not depend on the worker count,
on `memory_budget_mb` (how many partitions the global steps are cut into) or on resuming."""
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from test_dedup_semantic import REPO, _digests, _doc, _paraphrase, _write

from data_pipeline.dedup import GLOBAL_STAGES
from data_pipeline.dedup.balance import best_per_cluster, decide
from data_pipeline.dedup.semantic import renumbering
from stack_common.shards import read_manifest, read_table

# MiB: budgets small enough to cut this corpus's global steps into several partitions each
SEMANTIC_TINY = 0.2      # ~17 KiB per document: 4+ cluster partitions
BALANCE_TINY = 0.0015    # 96 B per document in a cluster partition, 160 B in an order range, 4 KiB of terms


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """48 real documents in 6+ shards, quality in steps, two paraphrases (one better than its
    original) and one verbatim copy."""
    en = [r for r in pq.read_table(REPO / "data/sample/en.parquet").to_pylist() if len(r["text"]) > 1500][:24]
    zh = [r for r in pq.read_table(REPO / "data/sample/zh.parquet").to_pylist() if len(r["text"]) > 400][:24]
    docs = [_doc(f"en{i:02d}", r["text"], "en", round(0.3 + (i % 5) / 10, 2)) for i, r in enumerate(en)]
    docs += [_doc(f"zh{i:02d}", r["text"], "zh", round(0.3 + (i % 4) / 10, 2)) for i, r in enumerate(zh)]
    docs += [_doc("en01-para", _paraphrase(en[1]["text"], "en"), "en", 0.2),
             _doc("zh02-para", _paraphrase(zh[2]["text"], "zh"), "zh", 0.95),
             _doc("en03-copy", en[3]["text"], "en", 0.1)]
    src = _write(tmp_path_factory.mktemp("partitioned") / "in", docs, target_bytes=20_000)
    assert len(read_manifest(src)["files"]) >= 6
    return src


@pytest.fixture(scope="module")
def semantic_one(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("sem1") / "out"
    return out, GLOBAL_STAGES["semantic_dedup"](corpus, out, {}, 1, "local", None)


def test_semantic_partitioned_same_output_for_two_workers_and_a_tiny_budget(corpus, semantic_one, tmp_path):
    out, stats = semantic_one
    assert stats["partitions"] == 1 and stats["order_ranges"] == 1 and stats["kmeans_sample"] == 51
    removed = {r["id"]: json.loads(r["annotations"])["duplicate_of"] for r in read_table(out / "excluded").to_pylist()}
    assert removed == {"en01-para": "en01", "zh02": "zh02-para", "en03-copy": "en03"}
    tiny = GLOBAL_STAGES["semantic_dedup"](corpus, tmp_path / "tiny", {"memory_budget_mb": SEMANTIC_TINY},
                                           2, "local", None)
    assert tiny["partitions"] >= 4
    assert _digests(tmp_path / "tiny") == _digests(out)
    same = ("clusters", "cluster_sizes", "k")
    assert {k: tiny[k] for k in same} == {k: stats[k] for k in same}
    # Each partition wrote one record batch of duplicates per input shard.
    assert len(list((tmp_path / "tiny" / "work" / "dups").glob("*.arrow"))) == tiny["partitions"]


def test_semantic_kmeans_on_a_sample_still_assigns_every_document(corpus, tmp_path):
    conf = {"kmeans_docs": 20, "n_clusters": 4}
    one = GLOBAL_STAGES["semantic_dedup"](corpus, tmp_path / "w1", conf, 1, "local", None)
    assert one["kmeans_sample"] == 20 and one["clusters"] <= 4
    kept = [json.loads(r["annotations"]) for r in read_table(tmp_path / "w1" / "kept").to_pylist()]
    excluded = [json.loads(r["annotations"]) for r in read_table(tmp_path / "w1" / "excluded").to_pylist()]
    sizes = np.bincount([n["cluster_id"] for n in kept + excluded])
    assert sizes.sum() == 51 and sorted(sizes.tolist(), reverse=True) == sizes.tolist()   # numbered by size
    assert one["cluster_sizes"]["max"] == sizes.max() and one["cluster_sizes"]["min"] == sizes.min()


@pytest.fixture(scope="module")
def clustered(semantic_one):
    return semantic_one[0] / "kept"


@pytest.mark.parametrize("conf", [{}, {"keep": "random", "seed": 5, "max_per_cluster": 3}])
def test_balance_partitioned_same_output_for_two_workers_and_a_tiny_budget(clustered, tmp_path, conf):
    one = GLOBAL_STAGES["cluster_balance"](clustered, tmp_path / "w1", conf, 1, "local", None)
    tiny = GLOBAL_STAGES["cluster_balance"](clustered, tmp_path / "tiny",
                                            {**conf, "memory_budget_mb": BALANCE_TINY}, 2, "local", None)
    assert one["partitions"] == 1 and one["term_partitions"] == 1 and one["order_ranges"] == (1 if conf == {} else 0)
    assert tiny["partitions"] >= 3 and tiny["term_partitions"] > 100
    assert tiny["order_ranges"] == (5 if conf == {} else 0)
    assert _digests(tmp_path / "tiny") == _digests(tmp_path / "w1")
    assert (tmp_path / "tiny" / "clusters.tsv").read_text() == (tmp_path / "w1" / "clusters.tsv").read_text()
    sizes = [int(line.split("\t")[1]) for line in (tmp_path / "w1" / "clusters.tsv").read_text().splitlines()[1:]]
    assert one["docs_out"] == sum(min(s, one["cap"]) for s in sizes)


def test_balance_decide_keeps_the_first_cap_of_each_cluster_in_key_then_doc_order():
    cluster = np.array([1, 0, 1, 1, 0, 1])
    key = np.array([5, 9, 5, 1, 3, 0], np.uint64)
    doc = np.array([10, 11, 12, 13, 14, 15])
    # cluster 1 in keep order: doc 15 (key 0), 13 (1), 10 (5, smaller doc), 12 (5); cluster 0: 14, 11.
    assert decide(cluster, key, doc, 2).tolist() == [True, False, True, False, False, False]


def test_best_terms_per_cluster_break_ties_by_term():
    import pyarrow as pa

    table = pa.table({"cluster": [0, 0, 0, 1, 1], "term": ["b", "a", "c", "x", "y"],
                      "score": [1.0, 1.0, 2.0, 0.5, 0.7]})
    best = best_per_cluster(table, 2)
    assert list(zip(best.column("cluster").to_pylist(), best.column("term").to_pylist())) == [
        (0, "c"), (0, "a"), (1, "y"), (1, "x")]


def test_renumbering_largest_cluster_first_ties_by_best_rank_empty_clusters_none():
    sizes = np.array([3, 0, 5, 3])
    best = np.array([7, np.iinfo(np.int64).max, 9, 2])
    assert renumbering(sizes, best).tolist() == [2, -1, 0, 1]
