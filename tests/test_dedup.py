"""Dedup stages: exact, MinHash-LSH, line/sentence level; determinism, resume, Ray."""
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _helpers import run_killed_stage
from datasketch import MinHash, MinHashLSH

from data_pipeline.dedup import GLOBAL_STAGES
from data_pipeline.dedup.common import input_shards, iter_shard
from data_pipeline.dedup.minhash import (MinHashConfig, ShingleStore, bucket_pairs, jaccard_sorted, lsh_params,
                                     shingle_set, signatures)
from data_pipeline.dedup.text import char_shingle_hashes, normalize, shingle_codes, shingle_hashes, split_units
from data_pipeline.dedup.unionfind import component_roots
from data_pipeline.schema import DOC_SCHEMA
from stack_common.errors import ConfigError, UserError
from stack_common.shards import read_manifest, read_table, write_table

REPO = Path(__file__).resolve().parents[1]
STAGE_NAMES = ["exact_dedup", "minhash_dedup", "line_dedup"]


# ---- corpus helpers ------------------------------------------------------------------------------

def _doc(id_, text, lang, quality=None, **notes):
    return {"id": id_, "text": text, "lang": lang, "source": "test", "quality_score": quality,
            "annotations": json.dumps(notes)}


def _write(path, docs, target_bytes=60_000):
    write_table(path, pa.Table.from_pylist(docs, schema=DOC_SCHEMA), target_bytes=target_bytes)
    return path


def _edit_tokens(text, lang, rate, rng):
    """Replace about `rate` of the tokens (characters in Chinese, words in English) with random ones."""
    toks = list(text) if lang == "zh" else text.split(" ")
    for _ in range(max(1, int(len(toks) * rate))):
        toks[rng.randrange(len(toks))] = rng.choice("天地玄黄宇宙洪荒" if lang == "zh" else ["alpha", "beta", "gamma"])
    return ("" if lang == "zh" else " ").join(toks)


TOKENS = MinHashConfig(shingle="tokens")
SMALL_PARTS = {"memory_budget_mb": 0.05}     # 8 band-key and pair partitions on the test corpus


def _exact_jaccard(a, b, conf=MinHashConfig()):
    """The stage's exact Jaccard (default: character 5-gram shingles)."""
    return jaccard_sorted(shingle_set(a, conf), shingle_set(b, conf))


@pytest.fixture(scope="session")
def near_dup_corpus(tmp_path_factory):
    """Real sample documents, near copies at known rates, far copies, and unrelated documents."""
    rng = random.Random(7)
    en = [r for r in pq.read_table(REPO / "data/sample/en.parquet").to_pylist() if len(r["text"]) > 1500][:70]
    zh = [r for r in pq.read_table(REPO / "data/sample/zh.parquet").to_pylist() if len(r["text"]) > 400][:70]
    docs, pairs = [], []
    for lang, rows in (("en", en), ("zh", zh)):
        for i, row in enumerate(rows):
            text = " ".join(row["text"].split()) if lang == "en" else row["text"].replace("\n", "")
            docs.append(_doc(row["id"], text, lang, round(rng.random(), 3) if i % 5 else None))
            if i < 30:
                rate = 0.01
            elif i < 40:
                rate = 0.15 if lang == "zh" else 0.35         # far copies (words weigh less in char 5-grams)
            else:
                continue
            copy = _edit_tokens(text, lang, rate, rng)
            docs.append(_doc(f"{row['id']}/copy", copy, lang, round(rng.random(), 3)))
            pairs.append((row["id"], f"{row['id']}/copy", _exact_jaccard(text, copy)))
    rng.shuffle(docs)
    path = _write(tmp_path_factory.mktemp("near") / "in", docs)
    return path, docs, pairs


def _outputs(out_dir):
    """What must be identical between runs: every output file's rows and sha256, and the stats."""
    files = {sub: [(f["name"], f["rows"], f["sha256"]) for f in read_manifest(out_dir / sub)["files"]]
             for sub in ("kept", "excluded")}
    stats = json.loads((out_dir / "stats.json").read_text())
    stats.pop("seconds")
    stats.pop("step_seconds", None)
    stats.pop("peak_rss_mb", None)
    return files, stats


def _excluded_map(out_dir):
    t = read_table(out_dir / "excluded").to_pylist()
    return {r["id"]: json.loads(r["annotations"])["duplicate_of"] for r in t}


# ---- text ------------------------------------------------------------------------------------------

def test_normalize_folds_width_case_punctuation_and_whitespace():
    assert normalize("Ｈｅｌｌｏ,\tWORLD!!\n 你好，世界。") == "hello world 你好 世界"


def test_chinese_is_shingled_by_character_and_english_by_word():
    zh = "今天天气很好我们去公园散步吧"
    assert len(shingle_hashes(zh, 5)) == len(zh) - 4              # character 5-grams, no spaces needed
    en = "the quick brown fox jumps over the lazy dog"
    assert len(shingle_hashes(en, 5)) == 9 - 4                     # word 5-grams
    assert np.array_equal(shingle_hashes("The quick, brown fox: JUMPS over the lazy dog.", 5), shingle_hashes(en, 5))
    # One changed character in Chinese costs 5 of 10 shingles, not the whole (space-less) document.
    assert _exact_jaccard(zh, zh[:6] + "坏" + zh[7:], TOKENS) == pytest.approx(5 / 15)
    assert len(shingle_hashes("你好", 5)) == 1 and len(shingle_hashes("  ,. ", 5)) == 0
    mixed = shingle_hashes("使用 Linux 内核", 2)                   # 使 用 linux 内 核 -> 4 bigrams
    assert len(mixed) == 4


def test_character_shingles_are_every_window_of_the_folded_text():
    text = "Use  LS -l，列出\n文件"
    assert shingle_codes(text).tobytes().decode("utf-32-le") == "use ls -l,列出文件"   # width, case, spaces
    assert len(char_shingle_hashes(text, 5)) == len("use ls -l,列出文件") - 4
    windows = char_shingle_hashes("abcabc", 3)                          # abc bca cab abc
    assert windows[0] == windows[3] and len(set(windows.tolist())) == 3
    assert len(char_shingle_hashes("你好", 5)) == 1 and len(char_shingle_hashes(" \n\t", 5)) == 0


def test_sentence_units_handle_chinese_punctuation_and_join_back():
    text = "第一句。第二句！Third one. Pi is 3.14 here?\n下一行；还有\n"
    units = split_units(text, "sentence")
    assert "".join(units) == text
    assert units[:4] == ["第一句。", "第二句！", "Third one.", " Pi is 3.14 here?"]
    assert split_units(text, "paragraph") == ["第一句。第二句！Third one. Pi is 3.14 here?\n", "下一行；还有\n"]


def test_signatures_are_datasketch_minhash_of_the_shingle_set():
    sets = [np.unique(shingle_hashes("a b c d e f g h i j k", 3)), np.unique(shingle_hashes("天地玄黄宇宙洪荒", 3))]
    sig = signatures(sets, 64, 3)
    for s, row in zip(sets, sig):
        m = MinHash(num_perm=64, seed=3, hashfunc=int)
        for v in s.tolist():
            m.update(v)
        assert np.array_equal(m.hashvalues, row)


def test_union_find_roots_are_component_minimum():
    roots = component_roots(8, np.array([5, 3, 7, 1]), np.array([3, 6, 6, 2]))
    assert roots.tolist() == [0, 1, 1, 3, 4, 3, 3, 3]


def test_lsh_bands_favour_recall_at_the_threshold():
    bands, rows = lsh_params(MinHashConfig())
    assert bands * rows <= 128
    p_at_threshold = 1 - (1 - 0.8 ** rows) ** bands
    assert p_at_threshold > 0.9, (bands, rows)


# ---- exact -------------------------------------------------------------------------------------------

def test_exact_dedup_clusters_normalized_copies_and_picks_survivor(tmp_path):
    docs = [
        _doc("b", "Hello   World, this is a test.", "en", 0.5),
        _doc("a", "hello world this is a test", "en", 0.9),          # best quality: survives
        _doc("c", "ＨＥＬＬＯ world; this is a TEST!", "en", None),    # null quality = lowest
        _doc("z", "另一篇文章，完全不同。", "zh", 0.1),
        _doc("y", "另一篇文章 完全不同", "zh", 0.1),                   # same quality: longer "z" survives
        _doc("x", "unique text", "en", 0.2),
        _doc("e2", "same length", "en", None), _doc("e1", "same length", "en", None),  # tie: smaller id
    ]
    stats = GLOBAL_STAGES["exact_dedup"](_write(tmp_path / "in", docs), tmp_path / "out", {}, 1, "local", None)
    kept = [r["id"] for r in read_table(tmp_path / "out/kept").to_pylist()]
    assert kept == ["a", "z", "x", "e1"]                              # input order kept
    excluded = read_table(tmp_path / "out/excluded").to_pylist()
    notes = {r["id"]: json.loads(r["annotations"]) for r in excluded}
    assert {k: v["duplicate_of"] for k, v in notes.items()} == {"b": "a", "c": "a", "y": "z", "e2": "e1"}
    assert notes["b"]["cluster_id"] == notes["c"]["cluster_id"] != notes["y"]["cluster_id"]
    assert {r["reason"] for r in excluded} == {"exact_duplicate"} and {r["stage"] for r in excluded} == {"exact_dedup"}
    assert stats["docs_in"] == 8 == stats["docs_out"] + sum(stats["excluded"].values())
    assert stats["clusters"] == 3
    assert stats["bytes_in"] == sum(len(d["text"].encode()) for d in docs)


def test_errors_name_the_problem(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="manifest"):
        GLOBAL_STAGES["exact_dedup"](tmp_path / "empty", tmp_path / "o", {}, 1, "local", None)
    src = _write(tmp_path / "in", [_doc("a", "text", "en")])
    with pytest.raises(ConfigError) as err:
        GLOBAL_STAGES["minhash_dedup"](src, tmp_path / "o2", {"threshold": 1.5, "bands": 3}, 1, "local", None)
    assert "threshold" in str(err.value) and "bands/rows" in str(err.value)
    with pytest.raises(ConfigError, match="unit"):
        GLOBAL_STAGES["line_dedup"](src, tmp_path / "o3", {"unit": "word"}, 1, "local", None)
    with pytest.raises(ConfigError, match="nope"):
        GLOBAL_STAGES["exact_dedup"](src, tmp_path / "o4", {"nope": 1}, 1, "local", None)


# ---- minhash -----------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def minhash_run(near_dup_corpus, tmp_path_factory):
    src, docs, pairs = near_dup_corpus
    out = tmp_path_factory.mktemp("mh") / "w1"
    stats = GLOBAL_STAGES["minhash_dedup"](src, out, SMALL_PARTS, 1, "local", None)
    return out, stats


def test_minhash_removes_near_duplicates_and_only_them(near_dup_corpus, minhash_run):
    src, docs, pairs = near_dup_corpus
    out, stats = minhash_run
    excluded = _excluded_map(out)
    texts = {d["id"]: d["text"] for d in docs}
    high = [(a, b) for a, b, j in pairs if j >= 0.85]
    low = [(a, b) for a, b, j in pairs if j < 0.7]
    assert len(high) >= 30 and len(low) >= 15                     # the corpus exercises both sides
    for a, b in high:                                               # recall: one of each pair removed
        assert (excluded.get(a) == b) != (excluded.get(b) == a), (a, b)
    for a, b in low:
        assert a not in excluded and b not in excluded, (a, b)
    for doc, survivor in excluded.items():                          # precision: every link verified
        assert _exact_jaccard(texts[doc], texts[survivor]) >= 0.8
    assert stats["docs_in"] == len(docs) == stats["docs_out"] + stats["excluded"]["near_duplicate"]
    assert stats["verified_pairs"] <= stats["candidate_pairs"] and stats["clusters"] == len(set(excluded.values()))


def test_minhash_survivor_is_best_quality_then_longest(near_dup_corpus, minhash_run):
    _, docs, _ = near_dup_corpus
    by_id = {d["id"]: d for d in docs}
    for doc, survivor in _excluded_map(minhash_run[0]).items():
        q = lambda i: -1.0 if by_id[i]["quality_score"] is None else by_id[i]["quality_score"]  # noqa: E731
        key = lambda i: (-q(i), -len(by_id[i]["text"]), i)  # noqa: E731
        assert key(survivor) < key(doc)
    kept = read_table(minhash_run[0] / "kept").to_pylist()
    annotated = [json.loads(r["annotations"]).get("minhash_dedup_cluster") for r in kept]
    assert sum(a is not None for a in annotated) == minhash_run[1]["clusters"]


def test_disk_bands_find_the_same_candidates_as_datasketch_lsh(near_dup_corpus, minhash_run):
    """The on-disk band sort is datasketch's MinHashLSH banding: same candidate pairs."""
    out, stats = minhash_run
    work = out / "work"
    names = [p.stem for p in sorted((work / "signatures").glob("*.arrow"))]
    sig_tables = [read_table_file(work / "signatures" / f"{n}.arrow") for n in names]
    ids = [i for t in sig_tables for i in t.column("id").to_pylist()]
    sigs = np.concatenate([np.stack(t.column("signature").to_numpy(zero_copy_only=False)) for t in sig_tables])
    lsh = MinHashLSH(num_perm=128, params=(stats["bands"], stats["rows"]))
    for i, s in enumerate(sigs):
        lsh.insert(i, MinHash(hashvalues=s, scheme="affine32"))
    expected = set()
    for i, s in enumerate(sigs):
        expected |= {(min(i, j), max(i, j)) for j in lsh.query(MinHash(hashvalues=s, scheme="affine32")) if j != i}
    rank = np.load(work / "order" / "rank.npy")
    by_rank = np.argsort(rank)
    found = set()
    for p in sorted((work / "pairs").glob("part-*.arrow")):
        t = read_table_file(p)
        for a, b in zip(by_rank[t.column("a").to_numpy()], by_rank[t.column("b").to_numpy()]):
            found.add((min(a, b), max(a, b)))
    # Buckets pair each member with the bucket's best document and its nearest-ranked members, so the
    # found pairs are a spanning subset of datasketch's all-pairs: same connected documents, no pair outside.
    assert found <= expected and len(found) > 0
    assert _components(found) == _components(expected)
    # one stored signature per document, each datasketch's MinHash (seed 1) of the document's shingles
    texts = {d["id"]: d["text"] for d in near_dup_corpus[1]}
    assert sorted(ids) == sorted(texts)
    for doc_id, sig in list(zip(ids, sigs))[::5]:
        expect = MinHash(num_perm=128, seed=1, hashfunc=int)
        for shingle in np.unique(char_shingle_hashes(texts[doc_id], 5)).tolist():
            expect.update(shingle)
        assert np.array_equal(sig, expect.hashvalues), doc_id


def test_minhash_stores_shingles_of_candidate_documents_only(near_dup_corpus, minhash_run):
    """The verify step's shingle store holds exactly the documents of the candidate pairs, each with the
    set the signature step hashed; the others' sets are never written."""
    out, stats = minhash_run
    work = out / "work"
    candidates = set()
    for p in sorted((work / "pairs").glob("part-*.arrow")):
        t = read_table_file(p)
        candidates |= set(t.column("doc_a").to_pylist()) | set(t.column("doc_b").to_pylist())
    shards = input_shards(near_dup_corpus[0])
    stored = {s.first_doc + r for s in shards for r in np.load(work / "shingles" / f"{s.name}.rows.npy").tolist()}
    assert stored == candidates and stats["candidate_docs"] == len(candidates)
    ids = [i for s in shards for b in iter_shard(s, ["id"]) for i in b.column("id").to_pylist()]
    planted = {x for a, b, _ in near_dup_corpus[2] for x in (a, b)}
    near = {x for a, b, j in near_dup_corpus[2] if j >= 0.85 for x in (a, b)}
    assert near <= {ids[d] for d in candidates} <= planted      # the 60 documents without a copy: no sets
    texts = [t for s in shards for b in iter_shard(s, ["text"]) for t in b.column("text").to_pylist()]
    store = ShingleStore(work, [s.name for s in shards], [s.first_doc for s in shards])
    try:
        for doc in sorted(candidates):
            assert np.array_equal(store.get(doc), shingle_set(texts[doc], MinHashConfig())), doc
        with pytest.raises(KeyError, match="no candidate pair"):
            store.get(next(d for d in range(stats["docs_in"]) if d not in candidates))
    finally:
        store.close()
    size = sum(f.stat().st_size for f in (work / "shingles").glob("*.u32"))
    assert size == 4 * sum(len(shingle_set(texts[d], MinHashConfig())) for d in candidates)


def test_minhash_compares_bucket_members_that_both_miss_the_head(tmp_path):
    """A, B, C share an LSH bucket; B ~ C, but neither passes the check against the best-ranked A."""
    core = " ".join(f"core{i}" for i in range(60))
    a = core + " " + " ".join(f"alpha{i}" for i in range(40))
    b = core + " " + " ".join(f"beta{i}" for i in range(20))
    c = b.replace("beta17", "gamma")
    assert _exact_jaccard(b, c) >= 0.8 > max(_exact_jaccard(a, b), _exact_jaccard(a, c))
    # One band of one row: a shared bucket means the same first MinHash value; pick a seed that gives it.
    sets = [shingle_set(t, MinHashConfig()) for t in (a, b, c)]
    seed = next(s for s in range(1, 500) if len({int(v) for v in signatures(sets, 2, s)[:, 0]}) == 1)
    docs = [_doc("A", a, "en", 0.9), _doc("B", b, "en", 0.5), _doc("C", c, "en", 0.4)]
    cfg = {"num_perm": 2, "bands": 1, "rows": 1, "seed": seed}
    stats = GLOBAL_STAGES["minhash_dedup"](_write(tmp_path / "in", docs), tmp_path / "out", cfg, 1, "local", None)
    assert stats["candidate_pairs"] == 3 and stats["verified_pairs"] == 1
    assert _excluded_map(tmp_path / "out") == {"C": "B"}
    assert sorted(r["id"] for r in read_table(tmp_path / "out/kept").to_pylist()) == ["A", "B"]


def test_bucket_pairs_cover_small_buckets_fully_and_large_ones_by_window():
    keys = np.array([5, 5, 5, 7, 7, 5, 9], dtype=np.uint64)
    ranks = np.array([3, 0, 2, 1, 4, 6, 5])
    pairs = lambda w: sorted(zip(*(x.tolist() for x in bucket_pairs(keys, ranks, w))))  # noqa: E731
    assert pairs(16) == [(0, 2), (0, 3), (0, 6), (1, 4), (2, 3), (2, 6), (3, 6)]
    assert pairs(1) == [(0, 2), (0, 3), (0, 6), (1, 4), (2, 3), (3, 6)]   # head + the next member up


def read_table_file(path):
    with pa.memory_map(str(path)) as src:
        return pa.ipc.open_file(src).read_all()


def _components(pairs):
    nodes = sorted({x for p in pairs for x in p})
    idx = {n: i for i, n in enumerate(nodes)}
    a = np.array([idx[p[0]] for p in pairs]); b = np.array([idx[p[1]] for p in pairs])
    roots = component_roots(len(nodes), a, b)
    groups = {}
    for n, r in zip(nodes, roots):
        groups.setdefault(r, set()).add(n)
    return sorted(sorted(g) for g in groups.values())


def test_minhash_same_survivors_for_any_worker_count_or_shard_order(near_dup_corpus, minhash_run, tmp_path):
    src, docs, _ = near_dup_corpus
    ref_out, _ = minhash_run
    out2 = tmp_path / "w2"
    GLOBAL_STAGES["minhash_dedup"](src, out2, SMALL_PARTS, 2, "local", None)
    assert _outputs(out2) == _outputs(ref_out)                      # byte-identical files
    shuffled = list(reversed(docs))
    src3 = _write(tmp_path / "in3", shuffled, target_bytes=90_000)
    out3 = tmp_path / "w3"
    GLOBAL_STAGES["minhash_dedup"](src3, out3, {}, 2, "local", None)
    assert _excluded_map(out3) == _excluded_map(ref_out)
    assert sorted(r["id"] for r in read_table(out3 / "kept").to_pylist()) == \
        sorted(r["id"] for r in read_table(ref_out / "kept").to_pylist())


# ---- line dedup ---------------------------------------------------------------------------------------

def test_line_dedup_removes_repeated_paragraphs_but_first(tmp_path):
    boiler_en = "Subscribe to our newsletter for the latest updates and offers!"
    boiler_zh = "本站部分内容来自网络，如有侵权请联系删除，谢谢合作。"
    body = lambda i: f"Article number {i} talks about topic {i} in some real detail, with facts and figures."  # noqa
    docs = [_doc(f"en{i}", f"{body(i)}\n{boiler_en}\n{body(i + 100)}\n", "en", 0.1 * i) for i in range(1, 5)]
    docs += [_doc(f"zh{i}", f"第{i}篇文章讲述了一个完整而真实的故事，内容丰富。{boiler_zh}结尾段落第{i}号，总结全文。", "zh", 0.5)
             for i in range(3)]
    docs.append(_doc("short", f"{boiler_en}\nok\n", "en", 0.0))
    docs.append(_doc("code", "import os\n" * 3 + boiler_en + "\n", "code", None))
    docs.append(_doc("twice", f"{boiler_en}\n", "en", 0.0))           # 2 docs only: not repeated enough
    docs.append(_doc("twice2", f"{boiler_en}\n", "en", -1.0))
    out = tmp_path / "out"
    src = _write(tmp_path / "in", docs)
    GLOBAL_STAGES["line_dedup"](src, out / "p", {"min_count": 3}, 1, "local", None)
    kept = {r["id"]: r for r in read_table(out / "p/kept").to_pylist()}
    # en4 has the best quality: keeps the paragraph; every other en doc loses it.
    assert boiler_en in kept["en4"]["text"]
    for i in (1, 2, 3):
        assert kept[f"en{i}"]["text"] == f"{body(i)}\n{body(i + 100)}\n"
        assert json.loads(kept[f"en{i}"]["annotations"])["line_dedup"]["removed_units"] == 1
    assert kept["code"]["text"] == docs[-3]["text"]                    # code is skipped
    excluded = read_table(out / "p/excluded").to_pylist()
    assert [(r["id"], r["reason"]) for r in excluded] == [("short", "too_short_after_line_dedup"),
                                                          ("twice", "too_short_after_line_dedup"),
                                                          ("twice2", "too_short_after_line_dedup")]
    assert all(boiler_zh in kept[f"zh{i}"]["text"] for i in range(3))  # one line: paragraph level keeps it
    stats = GLOBAL_STAGES["line_dedup"](src, out / "s", {"unit": "sentence", "min_count": 3, "min_doc_chars": 20}, 1, "local", None)
    kept = {r["id"]: r for r in read_table(out / "s/kept").to_pylist()}
    assert boiler_zh in kept["zh0"]["text"]                            # equal quality: longest, then smallest id
    for i in (1, 2):
        assert kept[f"zh{i}"]["text"] == f"第{i}篇文章讲述了一个完整而真实的故事，内容丰富。结尾段落第{i}号，总结全文。"
    assert stats["docs_in"] == len(docs) == stats["docs_out"] + sum(stats["excluded"].values())
    assert stats["bytes_out"] == sum(len(r["text"].encode()) for r in kept.values())


def test_line_dedup_keeper_is_a_document_that_stays(tmp_path):
    """The best holder of U also loses V and falls under min_doc_chars: U must move to the next holder."""
    u = "Subscribe to our newsletter today please\n"                # 40 normalized chars: alone, too short
    v = "All rights reserved by the example company\n"
    body = lambda i: f"Body paragraph {i} carries enough unique words to stay well above the limit.\n"  # noqa
    docs = [_doc("top", v + body(0), "en", 1.0),                   # keeps V
            _doc("k", u + v, "en", 0.9),                            # best holder of U, left with U alone
            _doc("o1", u + body(1), "en", 0.5), _doc("o2", u + body(2), "en", 0.4)]
    stats = GLOBAL_STAGES["line_dedup"](_write(tmp_path / "in", docs), tmp_path / "out",
                                        {"min_count": 2, "min_doc_chars": 50}, 1, "local", None)
    kept = {r["id"]: r["text"] for r in read_table(tmp_path / "out/kept").to_pylist()}
    assert [r["id"] for r in read_table(tmp_path / "out/excluded").to_pylist()] == ["k"]
    assert kept == {"top": v + body(0), "o1": u + body(1), "o2": body(2)}   # U survives once, in o1
    assert stats["repeated_units"] == 2 and stats["removed_units"] == 3 and stats["docs_modified"] == 2  # k: U, V


# ---- resume after SIGKILL -------------------------------------------------------------------------------

KILL_POINTS = [("exact_dedup", "exact._hash_shard", 2), ("exact_dedup", "common.ShardOutput.keep", 2),
               ("minhash_dedup", "minhash._signature_shard", 2), ("minhash_dedup", "minhash._pair_partition", 2),
               ("minhash_dedup", "order._sort_range", 1), ("minhash_dedup", "minhash._shingle_shard", 2),
               ("minhash_dedup", "minhash._verify_partition", 2), ("minhash_dedup", "components._members", 1),
               ("minhash_dedup", "common.ShardOutput.keep", 3),
               ("line_dedup", "lines._unit_shard", 1), ("line_dedup", "common.ShardOutput.keep", 2)]


@pytest.mark.slow
def test_killed_stage_resumes_to_identical_output(near_dup_corpus, tmp_path):
    src, _, _ = near_dup_corpus
    reference = {}
    for stage in STAGE_NAMES:
        cfg = SMALL_PARTS if stage == "minhash_dedup" else {}
        GLOBAL_STAGES[stage](src, tmp_path / f"ref-{stage}", cfg, 1, "local", None)
        reference[stage] = _outputs(tmp_path / f"ref-{stage}")
    for k, (stage, target, after) in enumerate(KILL_POINTS):
        out = tmp_path / f"killed-{k}"
        cfg = SMALL_PARTS if stage == "minhash_dedup" else {}
        proc = run_killed_stage(src, out, stage, target, after, cfg)
        assert proc.returncode == -9, (target, proc.stderr[-2000:])
        assert not (out / "stats.json").exists()
        GLOBAL_STAGES[stage](src, out, cfg, 1, "local", None)
        assert _outputs(out) == reference[stage], target
        assert not [p for p in out.rglob(".*.tmp")], "temp files of the killed run are cleaned"


# ---- work/ of a committed stage -----------------------------------------------------------------------------

PIPELINE_DEDUP = ["stages=[exact_dedup,minhash_dedup]", "workers=1", "dedup.minhash.memory_budget_mb=0.05"]
KILL_IN_PIPELINE = """
import os, signal, sys
from data_pipeline.__main__ import execute, load_config
from data_pipeline.dedup import minhash
original = minhash._verify_partition
def killing(*args, **kwargs):
    original(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)
minhash._verify_partition = killing
execute(load_config(sys.argv[1:]))
"""


def _pipeline(src, out, *overrides):
    from data_pipeline.__main__ import execute, load_config
    return execute(load_config([f"input={src}", f"output={out}", *PIPELINE_DEDUP, *overrides]))


def _stage_outputs(out):
    return {d.name: _outputs(d) for d in sorted((out / "stages").iterdir())}


@pytest.fixture(scope="module")
def pipeline_dedup(near_dup_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("pipe") / "out"
    _pipeline(near_dup_corpus[0], out)
    return out


def test_pipeline_removes_committed_stages_work_unless_keep_work(near_dup_corpus, pipeline_dedup, tmp_path):
    stage_dirs = sorted((pipeline_dedup / "stages").iterdir())
    assert [d.name for d in stage_dirs] == ["00_exact_dedup", "01_minhash_dedup"]
    for d in stage_dirs:
        assert (d / "stats.json").is_file() and (d / "kept/manifest.json").is_file() and not (d / "work").exists()
    kept = tmp_path / "kept"
    _pipeline(near_dup_corpus[0], kept, "dedup.keep_work=true")
    assert _stage_outputs(kept) == _stage_outputs(pipeline_dedup)
    assert (kept / "stages/00_exact_dedup/work/decisions.json").is_file()
    assert len(list((kept / "stages/01_minhash_dedup/work/shingles").glob("*.rows.npy"))) >= 2
    # keep_work does not decide the output: a rerun without it is no other run; it removes the work/ left
    stats_files = sorted(kept.glob("stages/*/stats.json"))
    mtimes = [p.stat().st_mtime_ns for p in stats_files]
    _pipeline(near_dup_corpus[0], kept)
    assert [p.stat().st_mtime_ns for p in stats_files] == mtimes and not list(kept.glob("stages/*/work"))
    with pytest.raises(ConfigError, match="dedup.keep_work: true or false"):
        _pipeline(near_dup_corpus[0], tmp_path / "bad", "dedup.keep_work=maybe")


@pytest.mark.slow
def test_pipeline_killed_in_a_dedup_stage_keeps_its_work_and_resumes(near_dup_corpus, pipeline_dedup, tmp_path):
    src, out = near_dup_corpus[0], tmp_path / "out"
    env = {"BC_NO_PROGRESS": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", KILL_IN_PIPELINE, f"input={src}", f"output={out}", *PIPELINE_DEDUP],
                          cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-2000:]
    stage = out / "stages/01_minhash_dedup"
    assert not (stage / "stats.json").exists() and not (out / "stages/00_exact_dedup/work").exists()
    assert len(list((stage / "work/verified").glob("part-*.arrow"))) == 1      # the work done so far is kept
    _pipeline(src, out)
    assert _stage_outputs(out) == _stage_outputs(pipeline_dedup) and not list(out.glob("stages/*/work"))


# ---- Ray ---------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_ray_executor_matches_local(near_dup_corpus, minhash_run, ray_cluster, tmp_path):
    src, _, _ = near_dup_corpus
    GLOBAL_STAGES["minhash_dedup"](src, tmp_path / "ray", SMALL_PARTS, 2, "ray", ray_cluster.address)
    GLOBAL_STAGES["exact_dedup"](src, tmp_path / "ray-exact", {}, 2, "ray", ray_cluster.address)
    assert _outputs(tmp_path / "ray") == _outputs(minhash_run[0])
    GLOBAL_STAGES["exact_dedup"](src, tmp_path / "local-exact", {}, 1, "local", None)
    assert _outputs(tmp_path / "ray-exact") == _outputs(tmp_path / "local-exact")


def test_rerun_with_other_config_is_refused_not_mixed(near_dup_corpus, minhash_run):
    src, _, _ = near_dup_corpus
    with pytest.raises(UserError, match="another input or config"):
        GLOBAL_STAGES["minhash_dedup"](src, minhash_run[0], {"threshold": 0.7}, 1, "local", None)
