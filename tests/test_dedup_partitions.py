"""Partitioned exact and MinHash dedup: partition helpers, components, and a run with many
partitions that equals the one-partition run."""
import json
import os
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_pipeline.dedup import GLOBAL_STAGES
from data_pipeline.dedup.common import (Shard, input_shards, pair_partition, partition_count, read_arrow,
                                        read_decisions, read_order, read_partition, survivor_rank, unique_pairs,
                                        write_arrow, write_clusters, write_decisions, write_partitioned)
from data_pipeline.dedup.minhash import ShingleStore
from data_pipeline.dedup.order import build_order, range_key
from data_pipeline.dedup.unionfind import linked_components
from data_pipeline.schema import DOC_SCHEMA
from stack_common.shards import read_manifest, write_table

REPO = Path(__file__).resolve().parents[1]


def test_unique_pairs_keep_document_indices_above_2_to_the_32():
    big = 2 ** 32
    a = np.array([big, 0, big, 3 * big + 7, 0, 3 * big + 7], dtype=np.int64)
    b = np.array([0, 0, 0, 4 * big, 0, 4 * big - 1], dtype=np.int64)
    # The former encoding a * n_docs + b, n_docs = 2**32 + 1, wraps around int64: (2**32, 0) decodes wrong.
    n_docs = np.int64(big + 1)
    with np.errstate(over="ignore"):
        code = a[:1] * n_docs + b[:1]
    assert (int(code[0] // n_docs), int(code[0] % n_docs)) != (big, 0)
    ua, ub = unique_pairs(a, b)
    assert list(zip(ua.tolist(), ub.tolist())) == [(0, 0), (big, 0), (3 * big + 7, 4 * big - 1), (3 * big + 7, 4 * big)]
    parts = pair_partition(a, b, 7)
    assert parts[0] == parts[2] and parts[1] == parts[4]                    # equal pairs meet
    assert parts.min() >= 0 and parts.max() < 7


def test_equal_pairs_share_a_partition_and_partitions_are_balanced():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 2 ** 40, 20_000)
    b = rng.integers(0, 2 ** 40, 20_000)
    parts = pair_partition(np.concatenate([a, a]), np.concatenate([b, b]), 16)
    assert np.array_equal(parts[:20_000], parts[20_000:])
    counts = np.bincount(parts, minlength=16)
    assert counts.min() > 0.8 * counts.mean() and counts.max() < 1.2 * counts.mean()


def test_partition_count_follows_the_budget():
    assert partition_count(1_000_000, 96, 1024) == 1                    # 91.6 MiB in 1 GiB
    assert partition_count(100_000_000 * 18, 96, 1024) == 161            # 1.8e9 band keys * 96 B / 1 GiB
    assert partition_count(10, 96, 1e-8) == 4096                         # capped
    assert partition_count(0, 96, 1024) == 1


def test_partitioned_file_holds_each_partition_as_one_batch_in_input_order(tmp_path):
    schema = pa.schema([("doc", pa.int64()), ("key", pa.uint64())])
    part = np.array([2, 0, 2, 1, 0, 2])
    write_partitioned(tmp_path / "f.arrow", schema, {"doc": np.arange(6), "key": np.arange(6, dtype=np.uint64) * 10},
                      part, 4)
    got = [read_partition(tmp_path / "f.arrow", p).column("doc").to_pylist() for p in range(4)]
    assert got == [[1, 4], [3], [0, 2, 5], []]
    assert read_partition(tmp_path / "f.arrow", 2).column("key").to_pylist() == [0, 20, 50]


def _union_find_roots(nodes, a, b):
    parent = {n: n for n in nodes}

    def find(x):
        while parent[x] != x:
            x = parent[x]
        return x
    for x, y in zip(a, b):
        rx, ry = find(x), find(y)
        parent[max(rx, ry)] = min(rx, ry)
    return [find(n) for n in nodes]


def test_linked_components_merge_partition_stars_to_the_global_components():
    rng = np.random.default_rng(3)
    a = rng.integers(0, 5000, 3000) * 1_000_003      # sparse large node ids
    b = rng.integers(0, 5000, 3000) * 1_000_003
    nodes, roots = linked_components(a, b)
    assert nodes.tolist() == sorted(set(a.tolist()) | set(b.tolist()))
    assert roots.tolist() == _union_find_roots(nodes.tolist(), a.tolist(), b.tolist())
    # Components of each of 4 edge partitions, then of their (node, root) links: the same roots.
    part = pair_partition(a, b, 4)
    stars = [linked_components(a[part == p], b[part == p]) for p in range(4)]
    merged = linked_components(np.concatenate([s[0] for s in stars]), np.concatenate([s[1] for s in stars]))
    assert np.array_equal(merged[0], nodes) and np.array_equal(merged[1], roots)


@pytest.fixture(scope="module")
def copies_corpus(tmp_path_factory):
    """Sample documents with verbatim, case-changed and edited copies, shuffled into 6+ shards."""
    rng = random.Random(5)
    rows = []
    for lang in ("en", "zh"):
        for r in pq.read_table(REPO / "data/sample" / f"{lang}.parquet").to_pylist()[:40]:
            rows.append({"id": r["id"], "text": r["text"], "lang": lang, "source": "t",
                         "quality_score": round(rng.random(), 2), "annotations": "{}"})
            text = r["text"]
            for k in range(rng.randrange(4)):
                words = text.split(" ") if lang == "en" else list(text)
                words[rng.randrange(len(words))] = "edit"
                text = text.upper() if k == 0 else (" " if lang == "en" else "").join(words)
                rows.append({**rows[-1], "id": f"{r['id']}-{k}", "text": text, "quality_score": rng.random()})
    rng.shuffle(rows)
    src = tmp_path_factory.mktemp("copies") / "in"
    write_table(src, pa.Table.from_pylist(rows, schema=DOC_SCHEMA), target_bytes=40_000)
    return src


def _result(out):
    files = {sub: [(f["name"], f["rows"], f["sha256"]) for f in read_manifest(out / sub)["files"]]
             for sub in ("kept", "excluded")}
    stats = json.loads((out / "stats.json").read_text())
    for key in ("seconds", "step_seconds", "peak_rss_mb", "partitions", "order_ranges", "component_partitions",
                "component_rounds"):
        stats.pop(key, None)
    return files, stats


@pytest.mark.parametrize("stage,tiny", [("exact_dedup", 0.002), ("minhash_dedup", 0.02)])
def test_many_partitions_give_the_one_partition_output(copies_corpus, tmp_path, stage, tiny):
    one = GLOBAL_STAGES[stage](copies_corpus, tmp_path / "one", {}, 1, "local", None)
    many = GLOBAL_STAGES[stage](copies_corpus, tmp_path / "many", {"memory_budget_mb": tiny}, 2, "local", None)
    assert one["partitions"] == 1 and many["partitions"] >= 5
    if stage == "minhash_dedup":                # the links' components too, in several partitions and phases
        assert one["component_rounds"] == 1 and many["component_partitions"] >= 2 and many["component_rounds"] >= 2
    assert _result(tmp_path / "many") == _result(tmp_path / "one")
    assert one["clusters"] >= 20 and sum(one["excluded"].values()) >= 30     # the corpus has duplicates
    # Decisions are written per rank range and input shard: a shard reads only its own documents'.
    shards = input_shards(copies_corpus)
    clustered = 0
    for shard in shards:
        docs = read_decisions(tmp_path / "many/work", shard).column("doc").to_numpy()
        assert ((docs >= shard.first_doc) & (docs < shard.first_doc + shard.rows)).all()
        clustered += len(docs)
    assert len(shards) >= 5 and clustered == one["clusters"] + sum(one["excluded"].values())


def _meta_shards(work, n_shards=5, rows=400, seed=0):
    """meta/<shard>.arrow files with many ties: 4 quality values (and null, -0.0), 6 lengths, random ids."""
    rng = np.random.default_rng(seed)
    shards, first = [], 0
    for i in range(n_shards):
        quality = rng.choice(np.array([0.5, 0.0, -0.0, 0.9, np.nan], dtype=np.float32), rows)
        table = pa.table({"id": [f"d{x}" for x in rng.integers(0, 10 ** 6, rows)],
                          "quality_score": pa.array(quality, pa.float32(), mask=np.isnan(quality)),
                          "n_chars": rng.choice([0, 10, 11, 500, 2 ** 33, 2 ** 33 + 1], rows)})
        write_arrow(work / "meta" / f"s{i}.arrow", table)
        shards.append(Shard(i, work / f"s{i}", f"s{i}", first, rows))
        first += rows
    return shards


def test_range_partitioned_order_is_the_global_sort(tmp_path):
    shards = _meta_shards(tmp_path)
    meta = pa.concat_tables([read_arrow(tmp_path / "meta" / f"{s.name}.arrow") for s in shards])
    ranges = build_order(tmp_path, shards, "meta", memory_budget_mb=0.02, stage="test")
    assert ranges >= 8
    rank, by_rank = read_order(tmp_path)
    assert np.array_equal(rank, survivor_rank(meta))
    assert np.array_equal(by_rank[rank], np.arange(len(meta)))
    # range_key never orders two documents against the survivor order; it merges -0.0 with 0.0 and
    # lengths past 2**32 (4 qualities x 5 lengths), whose ties the in-range sort breaks.
    keys = range_key(meta)[by_rank]
    assert (keys[1:] >= keys[:-1]).all() and len(np.unique(keys)) == 4 * 5


def test_clusters_numbered_per_rank_range_match_the_global_survivor_order(tmp_path):
    # 3 cluster files (as 3 group partitions write them), 40 clusters with survivors at random ranks,
    # 5 rank ranges, 4 input shards of 250 documents: cluster ids must be the survivors' order overall.
    rng = np.random.default_rng(1)
    n_docs, ranges = 1000, 5
    shards = [Shard(i, tmp_path, f"s{i}", 250 * i, 250) for i in range(4)]
    doc_of_rank = rng.permutation(n_docs)
    members = rng.permutation(n_docs)[:160].reshape(40, 4)       # ranks: 40 clusters of 4
    files = []
    for f in range(3):
        mine = members[f::3]
        ranks, roots = mine.ravel(), np.repeat(mine.min(axis=1), 4)
        docs, root_docs = doc_of_rank[ranks], doc_of_rank[roots]
        files.append(tmp_path / f"part-{f}.arrow")
        assert write_clusters(files[-1], docs, roots, root_docs, pa.array([f"id{d}" for d in root_docs]),
                              n_docs, ranges) == len(mine)
    assert write_decisions(tmp_path, shards, files, ranges, "test", workers=1, executor="local",
                           ray_address=None) == 40
    got = pa.concat_tables([read_decisions(tmp_path, s) for s in shards]).to_pydict()
    want_id = {r: i for i, r in enumerate(sorted(members.min(axis=1).tolist()))}
    want = {}
    for cluster in members:
        root = int(cluster.min())
        for r in cluster.tolist():
            want[int(doc_of_rank[r])] = (want_id[root], 4, None if r == root else f"id{doc_of_rank[root]}")
    assert dict(zip(got["doc"], zip(got["cluster_id"], got["cluster_size"], got["duplicate_of"]))) == want
    for s in shards:                                       # each shard's batch holds only its documents
        docs = read_decisions(tmp_path, s).column("doc").to_numpy()
        assert ((docs >= s.first_doc) & (docs < s.first_doc + s.rows)).all()


def test_partition_batches_hold_no_file_descriptor(tmp_path):
    schema = pa.schema([("doc", pa.int64())])
    for i in range(40):
        write_partitioned(tmp_path / f"s{i}.arrow", schema, {"doc": np.arange(10) + 10 * i}, np.arange(10) % 2, 2)
    before = len(os.listdir("/proc/self/fd"))
    batches = [read_partition(tmp_path / f"s{i}.arrow", 1) for i in range(40)]
    assert len(os.listdir("/proc/self/fd")) == before
    assert sum(int(b.column("doc").to_numpy().sum()) for b in batches) == sum(range(1, 400, 2))


def test_shingle_store_closes_the_least_recently_read_file(tmp_path):
    # 3 shards of 4 documents; rows 1 and 3 of each are candidates (the only sets stored)
    shards = [Shard(i, tmp_path, f"s{i}", 4 * i, 4) for i in range(3)]
    (tmp_path / "shingles").mkdir()
    for s in shards:
        sets = [np.array([s.index, 100], "<u4"), np.array([7], "<u4")]
        (tmp_path / "shingles" / f"{s.name}.u32").write_bytes(b"".join(x.tobytes() for x in sets))
        np.save(tmp_path / "shingles" / f"{s.name}.offsets.npy", np.array([0, 2, 3]))
        np.save(tmp_path / "shingles" / f"{s.name}.rows.npy", np.array([1, 3]))
    store = ShingleStore(tmp_path, [s.name for s in shards], [s.first_doc for s in shards])
    store.MAX_OPEN = 2
    try:
        assert store.get(1).tolist() == [0, 100] and store.get(7).tolist() == [7]      # s0, s1 open
        assert store.get(3).tolist() == [7]                                            # s0 read again
        assert store.get(9).tolist() == [2, 100]                                       # s2 opens, s1 closes
        assert list(store._open) == [0, 2]
        with pytest.raises(KeyError, match="document 8 .row 0 of s2. is in no candidate pair"):
            store.get(8)
    finally:
        store.close()
