"""Line dedup over key partitions: any partition count gives the output of one partition."""
import json
import random

import numpy as np
import pyarrow as pa
import pytest
from _helpers import run_killed_stage

from data_pipeline.dedup import GLOBAL_STAGES
from data_pipeline.dedup.common import MAX_PARTITIONS, doc_meta, partition_count, survivor_rank
from data_pipeline.dedup.lines import BYTES_PER_ROW, key_range
from data_pipeline.dedup.text import normalize, split_units, unit_key
from data_pipeline.schema import DOC_SCHEMA
from stack_common.shards import read_manifest, read_table, write_table

EN = ["Subscribe to our newsletter for the latest updates and offers.",
      "All rights reserved by the example company and its partners.",
      "Click here to read the full terms and conditions of this site.",
      "Share this article with your friends on social media today.",
      "This page was last edited on the first day of the month."]
ZH = ["本站部分内容来自网络，如有侵权请联系删除，谢谢合作。", "欢迎关注我们的公众号获取最新的资讯和优惠信息。",
      "版权所有，未经许可不得转载或者用于任何商业用途。"]
TINY_BUDGET = 0.002     # MB: a few dozen (key, doc) pairs a partition


def _doc(id_, text, lang, quality):
    return {"id": id_, "text": text, "lang": lang, "source": "test", "quality_score": quality, "annotations": "{}"}


def _corpus(path, n_docs=90, seed=3):
    """Documents of a unique body and repeated boilerplate (lines, and sentences within lines);
    qualities with ties and nulls; some documents are boilerplate only, so they end up too short,
    one of them a first keeper."""
    rng = random.Random(seed)
    docs = []
    for i in range(n_docs):
        lang = rng.choice(["en", "en", "zh"])
        pool = EN if lang == "en" else ZH
        lines = rng.sample(pool, rng.randint(1, 3))
        if rng.random() < 0.2:
            lines = [" ".join(rng.sample(pool, 2))]          # two boilerplate sentences on one line
        if rng.random() < 0.75:
            body = f"Document {i} has its own body text about item {i * 7}, written for this test alone."
            lines.insert(rng.randrange(len(lines) + 1), body)
        quality = None if rng.random() < 0.1 else round(rng.random(), 1)
        docs.append(_doc(f"d{i * 37 % n_docs:03d}", "\n".join(lines) + "\n", lang, quality))   # ids out of order
    # the best holder of EN[0] loses EN[1] to a better document and is left too short
    docs.insert(n_docs // 2, _doc("best-0", f"{EN[0]}\n{EN[1]}\n", "en", 1.5))
    body = "A long body line that only this one document has, nowhere else."
    docs.insert(n_docs // 3, _doc("best-1", f"{EN[1]}\n{body}\n", "en", 1.6))
    # best holders tied on quality and length: the smallest id keeps, not the first in input order
    for j, name in enumerate(["tie-c", "tie-a", "tie-b"]):
        docs.insert(n_docs // 4 + 20 * j, _doc(name, f"{EN[2]}\n{EN[3]}\n", "en", 1.7))
    write_table(path, pa.Table.from_pylist(docs, schema=DOC_SCHEMA), target_bytes=1500)
    return path


def by_definition(docs, cfg):
    """Line dedup computed per document from its definition: {id: text} kept, [id] excluded."""
    def order(i):                              # survivor order: quality (null last), length, id, input order
        q = docs[i]["quality_score"]
        return (q is None or q != q, -(q or 0.0), -len(docs[i]["text"]), docs[i]["id"], i)

    def unit_keys(text):
        return [(u, k if n >= 20 else None) for u in split_units(text, cfg["unit"]) for k, n in [unit_key(u)]]

    holders = {}
    for i, d in enumerate(docs):
        for k in {k for _, k in unit_keys(d["text"]) if k is not None}:
            holders.setdefault(k, []).append(i)

    def stripped(keeper):
        return {i: "".join(u for u, k in unit_keys(d["text"]) if keeper.get(k, i) == i) for i, d in enumerate(docs)}

    def too_short(texts):
        return {i for i, t in texts.items() if t != docs[i]["text"] and len(normalize(t)) < cfg["min_doc_chars"]}

    repeated = {k: h for k, h in holders.items() if len(h) >= cfg["min_count"]}
    short = too_short(stripped({k: min(h, key=order) for k, h in repeated.items()}))
    texts = stripped({k: min(h, key=lambda i: (i in short, order(i))) for k, h in repeated.items()})
    excluded = too_short(texts)
    return {docs[i]["id"]: t for i, t in texts.items() if i not in excluded}, sorted(docs[i]["id"] for i in excluded)


def _kept_and_excluded(out_dir):
    kept = {r["id"]: r["text"] for r in read_table(out_dir / "kept").to_pylist()}
    return kept, sorted(r["id"] for r in read_table(out_dir / "excluded").to_pylist())


def _outputs(out_dir):
    files = {sub: [(f["name"], f["rows"], f["sha256"]) for f in read_manifest(out_dir / sub)["files"]]
             for sub in ("kept", "excluded")}
    stats = json.loads((out_dir / "stats.json").read_text())
    for key in ("seconds", "step_seconds", "partitions"):
        stats.pop(key)
    return files, stats


def test_partition_count_follows_the_budget():
    assert partition_count(0, BYTES_PER_ROW, 1) == 1
    assert partition_count(2 ** 20 // BYTES_PER_ROW, BYTES_PER_ROW, 1) == 1
    assert partition_count(2 ** 20 // BYTES_PER_ROW + 1, BYTES_PER_ROW, 1) == 2
    assert partition_count(10 ** 8, BYTES_PER_ROW, 1024) == 19    # 100M rows * 200 B = 18.6 GiB -> 19 tasks
    assert partition_count(10 ** 12, BYTES_PER_ROW, 1) == MAX_PARTITIONS


@pytest.mark.parametrize("unit", ["paragraph", "sentence"])
def test_many_partitions_give_the_output_of_one(tmp_path, unit):
    src = _corpus(tmp_path / "in")
    assert len(read_manifest(src)["files"]) >= 10
    cfg = {"unit": unit, "min_count": 3, "min_doc_chars": 70}
    one = GLOBAL_STAGES["line_dedup"](src, tmp_path / "one", cfg, 1, "local", None)
    many = GLOBAL_STAGES["line_dedup"](src, tmp_path / "many", {**cfg, "memory_budget_mb": TINY_BUDGET}, 2, "local",
                                       None)
    assert one["partitions"] == 1 and many["partitions"] >= 5
    assert one["removed_units"] > 50 and one["excluded"]["too_short_after_line_dedup"] >= 5
    assert _outputs(tmp_path / "many") == _outputs(tmp_path / "one")
    assert _kept_and_excluded(tmp_path / "many") == by_definition(read_table(src).to_pylist(), cfg)
    kept, excluded = _kept_and_excluded(tmp_path / "many")
    assert "tie-a" in kept and {"tie-b", "tie-c"} <= set(excluded)
    # the corpus has keepers left too short, so the second pass hands units on
    assert _removals(tmp_path / "many/work/first") != _removals(tmp_path / "many/work/final")


def _removals(keeper_dir):
    return sorted(pair for f in keeper_dir.glob("p*.arrow")
                  for pair in zip(*read_table_file(f).to_pydict().values()))


def test_keeper_left_too_short_by_another_partition_hands_its_unit_on(tmp_path):
    """The best holder k of U loses V, whose key is in another partition, and falls under min_doc_chars:
    the final keepers of U's partition must pass U to the next holder, o1."""
    u = "Subscribe to our newsletter today please\n"                # 40 normalized chars: alone, too short
    v = "All rights reserved by the example company\n"
    body = lambda i: f"Body paragraph {i} carries enough unique words to stay well above the limit.\n"  # noqa
    docs = [_doc("top", v + body(0), "en", 1.0), _doc("k", u + v, "en", 0.9),
            _doc("o1", u + body(1), "en", 0.5), _doc("o2", u + body(2), "en", 0.4)]
    src = tmp_path / "in"
    write_table(src, pa.Table.from_pylist(docs, schema=DOC_SCHEMA), target_bytes=1)     # one document a shard
    assert len(read_manifest(src)["files"]) == 4
    cfg = {"min_count": 2, "min_doc_chars": 50, "memory_budget_mb": 0.0002}
    stats = GLOBAL_STAGES["line_dedup"](src, tmp_path / "out", cfg, 2, "local", None)
    n_parts = stats["partitions"]
    part = {}
    for name, text in (("u", u), ("v", v)):
        key = np.array([unit_key(text)[0]], np.uint64)
        part[name] = next(p for p in range(n_parts) if key_range(key, p, n_parts) == (0, 1))
    assert n_parts >= 2 and part["u"] != part["v"]
    kept = {r["id"]: r["text"] for r in read_table(tmp_path / "out/kept").to_pylist()}
    assert [r["id"] for r in read_table(tmp_path / "out/excluded").to_pylist()] == ["k"]
    assert kept == {"top": v + body(0), "o1": u + body(1), "o2": body(2)}
    assert stats["repeated_units"] == 2 and stats["removed_units"] == 3 and stats["docs_modified"] == 2


def read_table_file(path):
    with pa.memory_map(str(path)) as src:
        return pa.ipc.open_file(src).read_all()


def test_killed_keeper_step_resumes_to_identical_output(tmp_path):
    src = _corpus(tmp_path / "in")
    cfg = {"min_count": 3, "min_doc_chars": 70, "memory_budget_mb": TINY_BUDGET}
    n_parts = GLOBAL_STAGES["line_dedup"](src, tmp_path / "ref", cfg, 1, "local", None)["partitions"]
    out = tmp_path / "killed"
    proc = run_killed_stage(src, out, "line_dedup", "lines._keeper_partition", n_parts + 2, cfg)   # final pass
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert 0 < len(list((out / "work/final").glob("p*.arrow"))) < n_parts
    GLOBAL_STAGES["line_dedup"](src, out, cfg, 1, "local", None)
    assert _outputs(out) == _outputs(tmp_path / "ref")


def test_minus_infinity_quality_keeps_ahead_of_null_as_in_survivor_rank(tmp_path):
    """Survivor order is common.survivor_rank's across shards too: -inf is a score (ahead of null),
    and null holders tie on length are ordered by id."""
    u = "Subscribe to our newsletter for the latest updates and offers.\n"
    body = lambda i: f"Body paragraph {i} carries enough unique words to stay above the limit.\n"  # noqa
    docs = [_doc("a-c", u + body(1), "en", None), _doc("z-a", u + body(2), "en", float("-inf")),
            _doc("a-b", u + body(3), "en", None)]
    src = tmp_path / "in"
    write_table(src, pa.Table.from_pylist(docs, schema=DOC_SCHEMA), target_bytes=1)     # one document a shard
    assert len(read_manifest(src)["files"]) == 3
    rank = survivor_rank(pa.table(doc_meta(read_table(src).combine_chunks().to_batches()[0])))
    assert [docs[i]["id"] for i in np.argsort(rank)] == ["z-a", "a-b", "a-c"]
    stats = GLOBAL_STAGES["line_dedup"](src, tmp_path / "out", {"min_count": 3}, 1, "local", None)
    kept = {r["id"]: r["text"] for r in read_table(tmp_path / "out/kept").to_pylist()}
    assert kept == {"z-a": u + body(2), "a-b": body(3), "a-c": body(1)}
    assert stats["removed_units"] == 2
