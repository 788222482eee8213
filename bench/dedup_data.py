"""Labelled near-duplicate benchmark and scale corpora for bench/bench_dedup.py.

Built from ../shared/corpus (real text, benchmarks only):
  * zh / zh-TW page pairs: the zh-TW page converted to simplified script (zhconv or opencc,
    run in a separate interpreter given by --convert-python: not a project dependency);
  * synthetic copies of real documents: 1-20 % token edits, paragraph swaps, added boilerplate;
  * every other corpus document as background (it holds real unlabelled duplicates too).
Every labelled pair carries its exact Jaccard similarity (5-token shingles, as the stage uses).
"""
from __future__ import annotations

import json
import random
import re
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data_pipeline.dedup.minhash import jaccard_sorted
from data_pipeline.dedup.text import shingle_hashes
from data_pipeline.schema import DOC_SCHEMA
from stack_common.shards import write_table

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
PAIRED = ["debian-handbook", "debian-reference", "libreoffice-help", "manpages", "maint-guide"]
BOILER_EN = ["Home | About | Contact | Privacy Policy", "Share this page on social media",
             "Copyright 2024 All rights reserved.", "Subscribe to our newsletter for updates."]
BOILER_ZH = ["首页 | 关于我们 | 联系我们 | 隐私政策", "版权所有 © 2024 保留所有权利",
             "扫描二维码关注我们的微信公众号", "本站部分内容来自网络，如有侵权请联系删除"]
FILLER_ZH = "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后多定行学法所民得经"
FILLER_EN = ["the", "system", "value", "file", "user", "time", "data", "return", "option", "number", "page"]
MAX_CHARS = 60_000          # a few giant documents (a whole book) are cut so one doc does not dominate


def exact_jaccard(a: str, b: str, ngram: int = 5) -> float:
    return jaccard_sorted(np.unique(shingle_hashes(a, ngram)), np.unique(shingle_hashes(b, ngram)))


def load_corpus() -> list[dict]:
    docs = []
    for path in sorted(CORPUS.glob("*.parquet")):
        for row in pq.read_table(path, columns=["id", "source", "lang", "path", "text"]).to_pylist():
            row["text"] = row["text"][:MAX_CHARS]
            docs.append(row)
    return docs


def _page_key(source: str, path: str) -> str:
    key = re.sub(r"zh[-_](cn|tw)", "zh", path, flags=re.I)
    return source.replace("-zhtw", "").replace("-zh", "") + ":" + key


def convert_to_simplified(texts: list[str], python: str) -> list[str]:
    """Traditional -> simplified in another interpreter (bench/dedup_zhconv.py)."""
    script = Path(__file__).with_name("dedup_zhconv.py")
    out = subprocess.run([python, str(script)], input=json.dumps(texts), capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def _edit(text: str, lang: str, rate: float, rng: random.Random) -> str:
    """Replace, delete or insert about `rate` of the tokens (words in English, characters in Chinese)."""
    if lang == "zh":
        toks = list(text)
        filler = list(FILLER_ZH)
    else:
        toks = text.split(" ")
        filler = FILLER_EN
    for _ in range(max(1, int(len(toks) * rate))):
        i = rng.randrange(len(toks))
        op = rng.random()
        if op < 0.5:
            toks[i] = rng.choice(filler)
        elif op < 0.75:
            toks[i] = ""
        else:
            toks[i] = toks[i] + ("" if lang == "zh" else " ") + rng.choice(filler)
    joined = ("" if lang == "zh" else " ").join(toks)
    return re.sub(r" {2,}", " ", joined)


def _swap_paragraphs(text: str, rng: random.Random) -> str:
    paras = text.split("\n")
    if len(paras) >= 2:
        i, j = rng.sample(range(len(paras)), 2)
        paras[i], paras[j] = paras[j], paras[i]
    return "\n".join(paras)


def _boilerplate(text: str, lang: str, rng: random.Random) -> str:
    pool = BOILER_ZH if lang == "zh" else BOILER_EN
    return "\n".join(rng.sample(pool, 2)) + "\n" + text + "\n" + rng.choice(pool)


def synthetic_copy(text: str, lang: str, rng: random.Random) -> tuple[str, str]:
    kind = rng.choice(["edit", "edit", "swap", "boilerplate"])
    if kind == "edit":
        return _edit(text, lang, rng.uniform(0.01, 0.20), rng), kind
    if kind == "swap":
        return _edit(_swap_paragraphs(_swap_paragraphs(text, rng), rng), lang, 0.01, rng), kind
    return _edit(_boilerplate(text, lang, rng), lang, rng.uniform(0.0, 0.05), rng), kind


def build_benchmark(out_dir: Path, convert_python: str, copies_per_lang: int = 1500, seed: int = 0) -> dict:
    """Write out_dir/docs (shard dir) and out_dir/labels.parquet; return a summary."""
    rng = random.Random(seed)
    docs = load_corpus()
    zhtw = [d for d in docs if d["source"].endswith("-zhtw")]
    converted = convert_to_simplified([d["text"] for d in zhtw], convert_python)
    for d, text in zip(zhtw, converted):
        d["text"] = text
    by_key = {}
    for d in docs:
        if any(d["source"].startswith(p) for p in PAIRED) and d["lang"] == "zh":
            by_key.setdefault(_page_key(d["source"], d["path"]), []).append(d)
    labels = []
    for group in by_key.values():
        zh = [d for d in group if not d["source"].endswith("-zhtw")]
        tw = [d for d in group if d["source"].endswith("-zhtw")]
        if len(zh) == 1 and len(tw) == 1:
            labels.append({"a": zh[0]["id"], "b": tw[0]["id"], "lang": "zh", "kind": "zh-tw",
                           "jaccard": exact_jaccard(zh[0]["text"], tw[0]["text"])})
    for lang in ("en", "zh"):
        pool = [d for d in docs if d["lang"] == lang and 300 <= len(d["text"]) and not d["source"].endswith("-zhtw")]
        for i, orig in enumerate(rng.sample(pool, copies_per_lang)):
            text, kind = synthetic_copy(orig["text"], lang, rng)
            copy_id = f"{orig['id']}/copy-{i}"
            docs.append({"id": copy_id, "source": orig["source"], "lang": lang, "path": "", "text": text})
            labels.append({"a": orig["id"], "b": copy_id, "lang": lang, "kind": kind,
                           "jaccard": exact_jaccard(orig["text"], text)})
    rng.shuffle(docs)
    table = pa.Table.from_pylist([{"id": d["id"], "text": d["text"], "lang": d["lang"], "source": d["source"],
                                   "quality_score": None, "annotations": "{}"} for d in docs], schema=DOC_SCHEMA)
    write_table(out_dir / "docs", table, target_bytes=16 << 20)
    pq.write_table(pa.Table.from_pylist(labels), out_dir / "labels.parquet")
    return {"docs": len(docs), "labels": len(labels)}


def build_scale(out_dir: Path, n_docs: int, seed: int = 0, max_chars: int = 600) -> None:
    """n_docs documents sampled from the corpus (windows of at most max_chars), half of them
    mutated copies (token edits 0-20 %, paragraph swaps, boilerplate): a dup-heavy web-like mix."""
    rng = random.Random(seed)
    base = [d for d in load_corpus() if len(d["text"]) >= 200]
    schema = DOC_SCHEMA
    from stack_common.shards import ShardWriter
    with ShardWriter(out_dir, schema, prefix="scale", target_bytes=64 << 20) as writer:
        rows = []
        for i in range(n_docs):
            d = base[rng.randrange(len(base))]
            start = rng.randrange(max(1, len(d["text"]) - max_chars))
            text = d["text"][start:start + max_chars]
            if rng.random() < 0.5:
                text = synthetic_copy(text, d["lang"], rng)[0]
            rows.append({"id": f"s{i}", "text": text, "lang": d["lang"], "source": d["source"],
                         "quality_score": round(rng.random(), 3), "annotations": "{}"})
            if len(rows) == 20_000:
                writer.write(pa.Table.from_pylist(rows, schema=schema))
                rows = []
        if rows:
            writer.write(pa.Table.from_pylist(rows, schema=schema))
