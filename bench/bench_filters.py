"""Throughput of the heuristic filter stage, ours vs datatrove's equivalent steps, on the same
documents and one core each.

    python bench/bench_filters.py [--corpus ../shared/corpus] [--mb 8] \
        [--datatrove-python /work/venvs/datatrove/bin/python]

Ours: line cleaning + the per-language rule sets of `configs/data/rules/` (English: Gopher
quality, Gopher repetition, C4, FineWeb; Chinese: the character rules). datatrove (its own
venv, `pip install datatrove`): GopherQualityFilter -> GopherRepetitionFilter -> C4QualityFilter
-> FineWebQualityFilter with language "en" or "cmn" (jieba words). Both stop at the first
failing rule. Prints documents/s and MB/s per core (CPU seconds of the one process, so the
figure holds on a busy machine) for each, the speed-up and how often the two keep/drop
decisions agree.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DATATROVE_SIDE = r'''
import json, os, sys, time
os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
from datatrove.data import Document
from datatrove.pipeline.filters import (C4QualityFilter, FineWebQualityFilter, GopherQualityFilter,
                                        GopherRepetitionFilter)
docs = [json.loads(line) for line in open(sys.argv[1], encoding="utf-8")]
chains = {lang: [GopherQualityFilter(language=lang), GopherRepetitionFilter(language=lang),
                 C4QualityFilter(language=lang), FineWebQualityFilter(language=lang)] for lang in ("en", "cmn")}
for chain in chains.values():   # warm up tokenizers (jieba loads its dictionary once)
    for f in chain:
        f.filter(Document(text="warm up 预热 text. 中文。", id="w"))
keep = []
start = time.process_time()
for d in docs:
    doc = Document(text=d["text"], id=d["id"])
    kept = True
    for f in chains["cmn" if d["lang"] == "zh" else "en"]:
        result = f.filter(doc)
        if not (result[0] if isinstance(result, tuple) else result):
            kept = False
            break
    keep.append(kept)
print(json.dumps({"seconds": time.process_time() - start, "keep": keep}))
'''


def load_docs(corpus: Path, mb_per_lang: float, max_doc_kb: float) -> list[dict]:
    """Round-robin over the corpus files of each language until `mb_per_lang` MB of text
    (documents over `max_doc_kb` KB are skipped: web pages, not whole books)."""
    docs = []
    for lang in ("en", "zh"):
        tables = [pq.read_table(p, columns=["id", "lang", "text"]).to_pylist() for p in sorted(corpus.glob("*.parquet"))]
        pools = [[r for r in t if r["lang"] == lang and len(r["text"].encode("utf-8")) <= max_doc_kb * 1e3]
                 for t in tables]
        pools = [p for p in pools if p]
        budget, i = mb_per_lang * 1e6, 0
        while budget > 0 and any(pools):
            pool = pools[i % len(pools)]
            if pool:
                row = pool.pop(0)
                docs.append({"id": row["id"], "lang": lang, "text": row["text"]})
                budget -= len(row["text"].encode("utf-8"))
            i += 1
    return docs


def run_ours(docs: list[dict]) -> dict:
    from data_pipeline.__main__ import load_config
    from data_pipeline.clean_lines import LineCleaner
    from data_pipeline.filters import build_rule_sets

    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    rules = load_config([]).rules
    rule_sets = build_rule_sets(rules)
    cleaners = {lang: LineCleaner(rules[lang]["clean_lines"]) for lang in ("en", "zh")}
    keep = []
    start = time.process_time()
    for d in docs:
        text = cleaners[d["lang"]](d["text"])
        keep.append(bool(text.strip()) and rule_sets[d["lang"]](text) is None)
    return {"seconds": time.process_time() - start, "keep": keep}


def run_datatrove(docs: list[dict], python: str) -> dict | None:
    if not Path(python).is_file():
        print(f"datatrove: {python} not found (make a venv: python3 -m venv /work/venvs/datatrove && "
              "/work/venvs/datatrove/bin/pip install datatrove)")
        return None
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", encoding="utf-8", delete=False) as fh:
        for d in docs:
            fh.write(json.dumps(d, ensure_ascii=False) + "\n")
    try:
        proc = subprocess.run([python, "-c", DATATROVE_SIDE, fh.name], capture_output=True, text=True)
    finally:
        os.unlink(fh.name)
    if proc.returncode != 0:
        print(proc.stderr[-2000:])
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def report(name: str, docs: list[dict], result: dict) -> float:
    mb = sum(len(d["text"].encode("utf-8")) for d in docs) / 1e6
    rate = len(docs) / result["seconds"]
    kept = sum(result["keep"])
    print(f"{name:10s} {len(docs):7d} docs {mb:7.1f} MB {result['seconds']:8.2f} s  {rate:9.0f} docs/s/core "
          f"{mb / result['seconds']:7.2f} MB/s/core  kept {kept}")
    return mb / result["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default=str(REPO.parent / "shared" / "corpus"))
    parser.add_argument("--mb", type=float, default=8.0, help="MB of text per language")
    parser.add_argument("--max-doc-kb", type=float, default=100.0, help="skip documents larger than this")
    parser.add_argument("--datatrove-python", default=os.environ.get("DATATROVE_PYTHON",
                                                                     "/work/venvs/datatrove/bin/python"))
    args = parser.parse_args()
    docs = load_docs(Path(args.corpus), args.mb, args.max_doc_kb)
    print(f"{len(docs)} documents ({sum(d['lang'] == 'en' for d in docs)} en, {sum(d['lang'] == 'zh' for d in docs)} zh) "
          f"from {args.corpus}; one core each")
    for lang in ("en", "zh", None):
        subset = [d for d in docs if lang is None or d["lang"] == lang]
        ours = run_ours(subset)
        theirs = run_datatrove(subset, args.datatrove_python)
        print(f"--- {lang or 'all'}")
        ours_mbs = report("ours", subset, ours)
        if theirs:
            theirs_mbs = report("datatrove", subset, theirs)
            agree = sum(a == b for a, b in zip(ours["keep"], theirs["keep"])) / len(subset)
            print(f"speed-up {ours_mbs / theirs_mbs:.1f}x; same keep/drop decision on {agree:.1%} of documents")


if __name__ == "__main__":
    main()
