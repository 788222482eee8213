"""Multi-level dedup in one run (stage instances), semantic dedup and cluster balancing, on real
sample text with planted duplicates and paraphrases."""
import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _helpers import run_killed_stage

from data_pipeline.__main__ import execute, load_config
from data_pipeline.dedup import GLOBAL_STAGES
from data_pipeline.dedup.minhash import MinHashConfig, jaccard_sorted, shingle_set
from data_pipeline.schema import DOC_SCHEMA
from stack_common.errors import ConfigError, UserError
from stack_common.shards import read_manifest, read_table, write_table

REPO = Path(__file__).resolve().parents[1]
BOILERPLATE = "Copyright notice: this page is part of the bundled sample corpus."
SENTENCE = "这是一个在很多文档中重复出现的句子，用来测试句子级去重。"


def _doc(id_, text, lang, quality=None, **notes):
    return {"id": id_, "text": text, "lang": lang, "source": "test", "quality_score": quality,
            "annotations": json.dumps(notes)}


def _write(path, docs, target_bytes=40_000):
    write_table(path, pa.Table.from_pylist(docs, schema=DOC_SCHEMA), target_bytes=target_bytes)
    return path


def _paraphrase(text, lang):
    """Paragraphs in reverse order; in each, every 6th word dropped (en) or the clauses in reverse
    order (zh)."""
    paras = text.split("\n")[::-1]
    if lang == "en":
        return "\n".join(" ".join(w for i, w in enumerate(p.split(" ")) if i % 6 != 3) for p in paras)
    clauses = [re.findall(r"[^，。、；：]+[，。、；：]?", p) for p in paras]
    return "\n".join("".join(c[::-1]) for c in clauses)


def _jaccard(a, b):
    conf = MinHashConfig()
    return jaccard_sorted(shingle_set(a, conf), shingle_set(b, conf))


@pytest.fixture(scope="module")
def sample():
    en = [r for r in pq.read_table(REPO / "data/sample/en.parquet").to_pylist() if len(r["text"]) > 1500][:120]
    zh = [r for r in pq.read_table(REPO / "data/sample/zh.parquet").to_pylist() if len(r["text"]) > 400][:120]
    return en, zh


@pytest.fixture(scope="module")
def semantic_corpus(sample, tmp_path_factory):
    """60 real documents (quality 0.5), two paraphrases that MinHash misses (one better than its
    original), an empty text, a text in a script the model never saw, and a 3 MB document."""
    en, zh = sample
    docs = [_doc(f"en{i:02d}", r["text"], "en", 0.5) for i, r in enumerate(en[:30])]
    docs += [_doc(f"zh{i:02d}", r["text"], "zh", 0.5) for i, r in enumerate(zh[:30])]
    docs += [_doc("en00-para", _paraphrase(en[0]["text"], "en"), "en", 0.4),      # worse: removed
             _doc("zh03-para", _paraphrase(zh[3]["text"], "zh"), "zh", 0.9),      # better: zh03 removed
             _doc("empty", "", "en", 0.5),
             _doc("tifinagh", "ⵜⴰⵎⴰⵣⵉⵖⵜ ⵜⴰⵏⴰⵡⴰⵢⵜ " * 20, "other", 0.5),
             _doc("huge", "A long manual line with several words in it.\n" * 70_000, "en", 0.5)]
    src = _write(tmp_path_factory.mktemp("semantic") / "in", docs)
    return src, docs


@pytest.fixture(scope="module")
def semantic_run(semantic_corpus, tmp_path_factory):
    src, _ = semantic_corpus
    out = tmp_path_factory.mktemp("semantic_out") / "w1"
    return out, GLOBAL_STAGES["semantic_dedup"](src, out, {}, 1, "local", None)


def test_paraphrases_minhash_misses_are_semantic_duplicates(sample):
    en, zh = sample
    assert _jaccard(en[0]["text"], _paraphrase(en[0]["text"], "en")) < 0.7
    assert _jaccard(zh[3]["text"], _paraphrase(zh[3]["text"], "zh")) < 0.7


def test_semantic_dedup_removes_the_paraphrases_keeping_higher_quality(semantic_run):
    out, stats = semantic_run
    excluded = read_table(out / "excluded").to_pylist()
    assert sorted((r["id"], r["reason"], r["stage"]) for r in excluded) == [
        ("en00-para", "semantic_duplicate", "semantic_dedup"), ("zh03", "semantic_duplicate", "semantic_dedup")]
    notes = {r["id"]: json.loads(r["annotations"]) for r in excluded}
    assert notes["en00-para"]["duplicate_of"] == "en00" and notes["zh03"]["duplicate_of"] == "zh03-para"
    assert all(n["similarity"] > 0.85 for n in notes.values())
    assert stats["docs_in"] == 65 and stats["docs_out"] == 63 and stats["excluded"] == {"semantic_duplicate": 2}


def test_every_kept_document_has_its_cluster_and_distance(semantic_run):
    out, stats = semantic_run
    kept = {r["id"]: json.loads(r["annotations"]) for r in read_table(out / "kept").to_pylist()}
    assert len(kept) == 63
    # No n-gram the model knows: no embedding, cluster -1, kept.
    assert kept["empty"]["cluster_id"] == -1 and kept["tifinagh"]["cluster_id"] == -1
    assert stats["docs_without_embedding"] == 2
    clustered = {k: n for k, n in kept.items() if k not in ("empty", "tifinagh")}
    ids = sorted({n["cluster_id"] for n in clustered.values()})
    assert ids == list(range(stats["clusters"])) and stats["clusters"] == round(np.sqrt(63))
    assert all(0.0 <= n["cluster_distance"] <= 1.0 for n in clustered.values())
    removed = {r["id"]: json.loads(r["annotations"]) for r in read_table(out / "excluded").to_pylist()}
    assert removed["zh03"]["cluster_id"] == kept["zh03-para"]["cluster_id"]     # a duplicate shares its cluster
    assert removed["en00-para"]["cluster_id"] == kept["en00"]["cluster_id"]
    assert read_table(out / "kept").column("text").to_pylist()[-1].startswith("A long manual line")  # huge: kept whole


def test_semantic_dedup_same_output_for_any_worker_count(semantic_corpus, semantic_run, tmp_path):
    src, _ = semantic_corpus
    assert len(read_manifest(src)["files"]) >= 3
    GLOBAL_STAGES["semantic_dedup"](src, tmp_path / "w2", {}, 2, "local", None)
    for sub in ("kept", "excluded"):
        one = [f["sha256"] for f in read_manifest(semantic_run[0] / sub)["files"]]
        two = [f["sha256"] for f in read_manifest(tmp_path / "w2" / sub)["files"]]
        assert one == two


def test_semantic_dedup_embedding_measure_and_bad_settings(sample, tmp_path):
    en, zh = sample
    docs = [_doc(f"en{i:02d}", r["text"], "en", 0.5) for i, r in enumerate(en[:8])]
    docs += [_doc(f"zh{i:02d}", r["text"], "zh", 0.5) for i, r in enumerate(zh[:8])]
    docs.append(_doc("zh05-copy", zh[5]["text"], "zh", 0.6))            # same text, better score: zh05 goes
    src = _write(tmp_path / "in", docs)
    with pytest.raises(ConfigError, match="dedup.semantic.compare"):
        GLOBAL_STAGES["semantic_dedup"](src, tmp_path / "a", {"compare": "words"}, 1, "local", None)
    with pytest.raises(ConfigError, match="thresold"):
        GLOBAL_STAGES["semantic_dedup"](src, tmp_path / "b", {"thresold": 0.5}, 1, "local", None)
    stats = GLOBAL_STAGES["semantic_dedup"](src, tmp_path / "c", {"compare": "embedding", "threshold": 0.99},
                                            1, "local", None)
    excluded = read_table(tmp_path / "c" / "excluded").to_pylist()
    assert [(r["id"], json.loads(r["annotations"])["duplicate_of"]) for r in excluded] == [("zh05", "zh05-copy")]
    assert stats["docs_in"] == 17 and stats["docs_out"] == 16 and stats["dim"] == 16


# ---- cluster balancing -----------------------------------------------------------------------------

def _clustered_docs(sample):
    """Cluster 0: 10 English pages that all mention kubernetes, quality 0.90 .. 0.45; cluster 1: 3;
    cluster 2: 2; cluster 3: 1; one document without a cluster."""
    en, zh = sample
    docs = [_doc(f"c0-{i}", "kubernetes\n" + en[i]["text"], "en", 0.9 - 0.05 * i, cluster_id=0)
            for i in range(10)]
    docs += [_doc(f"c1-{i}", zh[i]["text"], "zh", 0.5, cluster_id=1) for i in range(3)]
    docs += [_doc(f"c2-{i}", zh[10 + i]["text"], "zh", 0.5, cluster_id=2) for i in range(2)]
    docs += [_doc("c3-0", en[20]["text"], "en", 0.5, cluster_id=3), _doc("none", en[21]["text"], "en", 0.5)]
    return docs


def test_balance_caps_over_represented_clusters_by_quality(sample, tmp_path):
    src = _write(tmp_path / "in", _clustered_docs(sample), target_bytes=20_000)
    stats = GLOBAL_STAGES["cluster_balance"](src, tmp_path / "out", {}, 1, "local", None)
    # sizes 10, 3, 2, 1: median 2.5, cap ceil(2.0 x 2.5) = 5; the five best of cluster 0 stay.
    assert stats["cap"] == 5 and stats["clusters_over_cap"] == 1 and stats["docs_without_cluster"] == 1
    excluded = read_table(tmp_path / "out" / "excluded").to_pylist()
    assert sorted(r["id"] for r in excluded) == [f"c0-{i}" for i in range(5, 10)]
    assert {r["reason"] for r in excluded} == {"cluster_balance.over_cap"}
    assert json.loads(excluded[0]["annotations"])["cluster_size"] == 10
    rows = [line.split("\t") for line in (tmp_path / "out" / "clusters.tsv").read_text().splitlines()]
    assert rows[0] == ["cluster_id", "size", "kept", "top_terms"]
    assert [r[:3] for r in rows[1:]] == [["0", "10", "5"], ["1", "3", "3"], ["2", "2", "2"], ["3", "1", "1"]]
    assert "kubernetes" in rows[1][3].split()        # in every document of cluster 0 only
    assert (tmp_path / "out" / "clusters.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert stats["docs_in"] == 17 and stats["docs_out"] == 12


def test_balance_random_keep_and_fixed_cap_are_worker_independent(sample, tmp_path):
    src = _write(tmp_path / "in", _clustered_docs(sample), target_bytes=20_000)
    conf = {"keep": "random", "max_per_cluster": 2, "seed": 3}
    one = GLOBAL_STAGES["cluster_balance"](src, tmp_path / "w1", conf, 1, "local", None)
    GLOBAL_STAGES["cluster_balance"](src, tmp_path / "w2", conf, 2, "local", None)
    assert one["cap"] == 2 and one["docs_out"] == 2 + 2 + 2 + 1 + 1
    ids = [sorted(read_table(tmp_path / w / "kept").column("id").to_pylist()) for w in ("w1", "w2")]
    assert ids[0] == ids[1]


def test_balance_without_cluster_ids_names_the_missing_stage(sample, tmp_path):
    en, _ = sample
    src = _write(tmp_path / "in", [_doc("a", en[0]["text"], "en"), _doc("b", en[1]["text"], "en")])
    with pytest.raises(UserError, match="semantic_dedup before cluster_balance"):
        GLOBAL_STAGES["cluster_balance"](src, tmp_path / "out", {}, 1, "local", None)


# ---- every level in one pipeline run ---------------------------------------------------------------

def _distinct(rows, n):
    """The first n documents sharing no paragraph or sentence with an earlier pick (the sample has
    its own boilerplate lines), so the planted repeats are the only ones."""
    from data_pipeline.dedup.text import split_units, unit_key

    seen, picked = set(), []
    for r in rows:
        r = {**r, "text": "\n".join(line for line in r["text"].split("\n") if not line.startswith("-- "))}  # signatures
        keys = {unit_key(u)[0] for unit in ("paragraph", "sentence") for u in split_units(r["text"], unit)
                if unit_key(u)[1] >= 20}
        if not keys & seen:
            seen |= keys
            picked.append(r)
    return picked[:n]


def _levels_corpus(sample):
    """Real documents and, planted: an exact copy, a near copy, a boilerplate line in 3 English
    documents, a sentence inside a line of 3 Chinese documents, a paraphrase."""
    en, zh = (_distinct(rows, 20) for rows in sample)
    assert len(en) == len(zh) == 20
    docs = [_doc(f"en{i:02d}", r["text"], "en", 0.5) for i, r in enumerate(en)]
    docs += [_doc(f"zh{i:02d}", r["text"], "zh", 0.5) for i, r in enumerate(zh)]
    docs.append(_doc("en01-copy", en[1]["text"].upper(), "en", 0.4))                       # exact (case folded)
    docs.append(_doc("en02-near", en[2]["text"][:-40] + "a different ending here", "en", 0.4))  # near
    for i in (3, 4, 5):
        docs[i]["text"] += "\n" + BOILERPLATE
    for i in (20, 21, 22):
        first, _, rest = docs[i]["text"].partition("。")
        docs[i]["text"] = first + "。" + SENTENCE + rest
    docs.append(_doc("zh03-para", _paraphrase(zh[3]["text"], "zh"), "zh", 0.3))
    return docs


def test_all_dedup_levels_in_one_run_each_with_its_own_stats(sample, tmp_path):
    src = _write(tmp_path / "in", _levels_corpus(sample))
    stats = execute(load_config([f"input={src}", f"output={tmp_path / 'out'}", "stages=[exact_dedup,minhash_dedup,"
                                 "line_dedup@paragraph,line_dedup@sentence,semantic_dedup,cluster_balance]",
                                 "dedup.balance.max_per_cluster=1000"]))
    by_stage = {s["stage"]: s for s in stats["stages"]}
    assert [s["dir"] for s in stats["stages"]] == [
        "stages/00_exact_dedup", "stages/01_minhash_dedup", "stages/02_line_dedup@paragraph",
        "stages/03_line_dedup@sentence", "stages/04_semantic_dedup", "stages/05_cluster_balance"]
    assert by_stage["exact_dedup"]["excluded"] == {"exact_duplicate": 1}
    assert by_stage["minhash_dedup"]["excluded"] == {"near_duplicate": 1}
    para, sent = by_stage["line_dedup@paragraph"], by_stage["line_dedup@sentence"]
    assert (para["unit"], para["removed_units"], para["docs_modified"]) == ("paragraph", 2, 2)
    assert (sent["unit"], sent["removed_units"], sent["docs_modified"]) == ("sentence", 2, 2)
    assert by_stage["semantic_dedup"]["excluded"] == {"semantic_duplicate": 1}
    assert by_stage["cluster_balance"]["excluded"] == {}
    assert stats["reconciled"] and stats["docs_read"] == 43 and stats["docs_kept"] == 40
    final = {r["id"]: r for r in read_table(tmp_path / "out" / "final").to_pylist()}
    assert sum(BOILERPLATE in final[f"en{i:02d}"]["text"] for i in (3, 4, 5)) == 1
    assert sum(SENTENCE in final[f"zh{i:02d}"]["text"] for i in (0, 1, 2)) == 1
    changed = [k for k, r in final.items() if "line_dedup@sentence" in json.loads(r["annotations"])]
    assert len(changed) == 2
    excluded = read_table(tmp_path / "out" / "stages" / "04_semantic_dedup" / "excluded").to_pylist()
    assert [r["id"] for r in excluded] == ["zh03-para"]


def test_instances_are_configured_and_unknown_ones_are_refused(tmp_path):
    cfg = load_config(["input=x", f"output={tmp_path}", "+dedup.instances.line_dedup.sentence.min_count=5"])
    from data_pipeline.dedup.instances import stage_settings

    assert stage_settings("line_dedup@sentence", cfg.dedup)["min_count"] == 5
    assert stage_settings("line_dedup@sentence", cfg.dedup)["unit"] == "sentence"
    assert stage_settings("line_dedup", cfg.dedup)["min_count"] == 3
    with pytest.raises(ConfigError) as err:
        execute(load_config(["input=x", f"output={tmp_path}", "stages=[line_dedup@word,filter@strict]",
                             "+dedup.semantc.threshold=0.5"]))
    text = str(err.value)
    assert "'line_dedup@word' is an unknown instance of line_dedup" in text
    assert "dedup.instances.line_dedup.word" in text and "line_dedup@paragraph, line_dedup@sentence" in text
    assert "'filter@strict': only global stages have instances" in text
    assert "dedup.semantc: unknown settings" in text


# ---- resume after SIGKILL -------------------------------------------------------------------------------

KILL_POINTS = [("semantic_dedup", "semantic._embed_shard", 2), ("semantic_dedup", "semantic._assign_shard", 2),
               ("semantic_dedup", "semantic.decide", 1), ("semantic_dedup", "common.ShardOutput.keep", 2),
               ("cluster_balance", "balance._scan_shard", 1), ("cluster_balance", "balance._split_shard", 2),
               ("cluster_balance", "common.ShardOutput.keep", 2)]


def _digests(out):
    return {sub: [f["sha256"] for f in read_manifest(out / sub)["files"]] for sub in ("kept", "excluded")}


@pytest.mark.slow
def test_killed_semantic_and_balance_stages_resume_to_identical_output(sample, tmp_path):
    en, zh = sample
    docs = [_doc(f"en{i:02d}", r["text"], "en", 0.5) for i, r in enumerate(en[:8])]
    docs += [_doc(f"zh{i:02d}", r["text"], "zh", 0.5) for i, r in enumerate(zh[:8])]
    docs.append(_doc("zh03-para", _paraphrase(zh[3]["text"], "zh"), "zh", 0.9))
    src = _write(tmp_path / "in", docs, target_bytes=15_000)
    assert len(read_manifest(src)["files"]) >= 3
    GLOBAL_STAGES["semantic_dedup"](src, tmp_path / "ref-semantic", {}, 1, "local", None)
    GLOBAL_STAGES["cluster_balance"](tmp_path / "ref-semantic" / "kept", tmp_path / "ref-balance", {}, 1, "local", None)
    reference = {"semantic_dedup": _digests(tmp_path / "ref-semantic"),
                 "cluster_balance": _digests(tmp_path / "ref-balance")}
    for k, (stage, target, after) in enumerate(KILL_POINTS):
        stage_src = src if stage == "semantic_dedup" else tmp_path / "ref-semantic" / "kept"
        out = tmp_path / f"killed-{k}"
        proc = run_killed_stage(stage_src, out, stage, target, after)
        assert proc.returncode == -9, (target, proc.stderr[-2000:])
        assert not (out / "stats.json").exists()
        GLOBAL_STAGES[stage](stage_src, out, {}, 1, "local", None)
        assert _digests(out) == reference[stage], target


def test_too_little_text_passes_everything_unclustered_and_balance_keeps_it(sample, tmp_path):
    en, _ = sample
    docs = [_doc("broken", en[0]["text"], "en"), _doc("empty", "", "en")]      # two texts: no 2-d embedding
    docs[0]["annotations"] = "{not json"
    src = _write(tmp_path / "in", docs)
    stats = GLOBAL_STAGES["semantic_dedup"](src, tmp_path / "sem", {}, 1, "local", None)
    assert stats["docs_out"] == 2 and stats["clusters"] == 0 and "too few" in stats["not_fitted"]
    assert stats["docs_without_embedding"] == 2 and stats["partitions"] == 0
    kept = read_table(tmp_path / "sem" / "kept").to_pylist()
    assert [json.loads(r["annotations"])["cluster_id"] for r in kept] == [-1, -1]
    assert json.loads(kept[0]["annotations"])["unparsed_annotations"] == "{not json"
    balanced = GLOBAL_STAGES["cluster_balance"](tmp_path / "sem" / "kept", tmp_path / "bal", {}, 1, "local", None)
    assert balanced["docs_out"] == 2 and balanced["docs_without_cluster"] == 2 and balanced["clusters"] == 0
    assert (tmp_path / "bal" / "clusters.tsv").read_text() == "cluster_id\tsize\tkept\ttop_terms\n"
