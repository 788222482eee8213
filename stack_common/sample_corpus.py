"""The bundled sample corpus and its generated "raw web" layer.

`data/sample/{en,zh,code}.parquet` hold real, redistributable text (see SOURCES.md).
`build_raw_web(out_dir)` turns it into what a crawl looks like: the clean documents mixed
with boilerplate lines, spam pages, exact and near duplicates and a few malformed records,
written as JSONL shards (plain and gzip), plus `heldout-<lang>.txt`: clean documents kept out
of the raw layer for evaluation. Fixed seed: the same bytes every time.

    python -m stack_common.sample_corpus OUT_DIR
"""
from __future__ import annotations

import gzip
import json
import random
import sys
from pathlib import Path

import pyarrow.parquet as pq

from .atomic import atomic_open, atomic_write_json
from .config import REPO_ROOT

SAMPLE_DIR = REPO_ROOT / "data" / "sample"
LANGS = ("en", "zh", "code")

BOILERPLATE_EN = ["Home | About | Contact | Privacy Policy", "Click here to subscribe to our newsletter!",
                  "Copyright 2024 All rights reserved.", "Share on Facebook Share on Twitter",
                  "This website uses cookies to improve your experience.", "Log in | Sign up", "Read more..."]
BOILERPLATE_ZH = ["首页 | 关于我们 | 联系我们 | 隐私政策", "点击这里免费注册，立即领取优惠券！", "版权所有 © 2024 保留所有权利",
                  "扫描二维码关注我们的微信公众号", "本站部分内容来自网络，如有侵权请联系删除", "上一篇 下一篇 返回顶部"]
SPAM_EN = ["buy cheap pills online best price", "win money now casino bonus free spins", "hot singles in your area"]
SPAM_ZH = ["免费领取 优惠 低价 促销 加微信", "代开发票 联系电话 一手货源 包邮", "彩票 中奖 赚钱 日赚 投资 理财"]


def load_clean(lang: str) -> list[dict]:
    return pq.read_table(SAMPLE_DIR / f"{lang}.parquet").to_pylist()


def _mutate(text: str, rng: random.Random, rate: float) -> str:
    """Near duplicate as a re-posted page looks: about `rate` of the words (characters for
    Chinese) deleted, repeated or swapped with a neighbour, and two paragraphs swapped."""
    paras = text.split("\n\n")
    if len(paras) > 2:
        i, j = rng.sample(range(len(paras)), 2)
        paras[i], paras[j] = paras[j], paras[i]
    text = "\n\n".join(paras)
    han = sum("\u4e00" <= c <= "\u9fff" for c in text[:2000]) > 200
    units = list(text) if han else text.split(" ")
    for _ in range(int(len(units) * rate)):
        i = rng.randrange(len(units))
        op = rng.random()
        if op < 0.4:
            units[i] = ""
        elif op < 0.7:
            units[i] = units[i] + ("" if han else " ") + units[i]
        elif i + 1 < len(units):
            units[i], units[i + 1] = units[i + 1], units[i]
    return "".join(units) if han else " ".join(units)


def _with_boilerplate(text: str, lang: str, rng: random.Random) -> str:
    pool = BOILERPLATE_ZH if lang == "zh" else BOILERPLATE_EN
    head = "\n".join(rng.sample(pool, 2))
    tail = "\n".join(rng.sample(pool, 2))
    return f"{head}\n{text}\n{tail}"


def _spam(lang: str, rng: random.Random) -> str:
    pool = SPAM_ZH if lang == "zh" else SPAM_EN
    return "\n".join(rng.choice(pool) for _ in range(rng.randint(5, 15)))


HELDOUT_DOCS = {"en": 8, "zh": 24}


def split_heldout(seed: int) -> tuple[dict[str, list[dict]], dict[str, list[str]]]:
    """Clean documents per language, minus a few set aside as held-out evaluation text."""
    rng = random.Random(seed + 1)
    kept, heldout = {}, {}
    for lang in LANGS:
        docs = load_clean(lang)
        picked = set(rng.sample(range(len(docs)), HELDOUT_DOCS.get(lang, 0)))
        heldout[lang] = [d["text"] for i, d in enumerate(docs) if i in picked]
        kept[lang] = [d for i, d in enumerate(docs) if i not in picked]
    return kept, heldout


def raw_records(seed: int = 1234) -> list[dict]:
    rng = random.Random(seed)
    records = []
    clean, _ = split_heldout(seed)
    for lang in LANGS:
        for doc in clean[lang]:
            kind = "clean"
            text = doc["text"]
            if lang != "code" and rng.random() < 0.3:
                text, kind = _with_boilerplate(text, lang, rng), "boilerplate"
            records.append({"id": doc["id"], "text": text, "source": doc["source"], "meta": {"kind": kind}})
    originals = [r for r in records if r["meta"]["kind"] == "clean" and len(r["text"]) > 400]
    for i, orig in enumerate(rng.sample(originals, min(60, len(originals)))):
        records.append({**orig, "id": f"{orig['id']}/exact-{i}", "meta": {"kind": "exact_dup", "of": orig["id"]}})
    for i, orig in enumerate(rng.sample(originals, min(60, len(originals)))):
        rate = rng.uniform(0.005, 0.03)
        records.append({"id": f"{orig['id']}/near-{i}", "text": _mutate(orig["text"], rng, rate),
                        "source": orig["source"], "meta": {"kind": "near_dup", "of": orig["id"], "rate": rate}})
    for i in range(40):
        lang = "zh" if i % 2 else "en"
        records.append({"id": f"spam/{lang}/{i}", "text": _spam(lang, rng), "source": "web-spam",
                        "meta": {"kind": "spam"}})
    rng.shuffle(records)
    return records


def _malformed_lines() -> list[bytes]:
    return [
        b'{"id": "bad/json", "text": "unterminated\n',
        b'{"id": "bad/no-text", "source": "web"}\n',
        b'{"id": "bad/text-type", "text": 42}\n',
        b'{"id": "bad/nul", "text": "nul\\u0000byte"}\n',
        b'{"id": "bad/utf8", "text": "\xff\xfe broken"}\n',
        b'[1, 2, 3]\n',
    ]


def build_raw_web(out_dir: str | Path, seed: int = 1234, n_shards: int = 4) -> list[Path]:
    """Write the raw layer as JSONL shards (odd ones gzip) plus `raw_manifest.json`; return paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = raw_records(seed)
    paths = []
    for s in range(n_shards):
        lines = [json.dumps(r, ensure_ascii=False).encode("utf-8") + b"\n" for r in records[s::n_shards]]
        if s == 0:
            lines[3:3] = _malformed_lines()
        data = b"".join(lines)
        path = out / (f"raw-{s:02d}.jsonl.gz" if s % 2 else f"raw-{s:02d}.jsonl")
        with atomic_open(path, "wb") as fh:
            fh.write(gzip.compress(data, mtime=0) if s % 2 else data)
        paths.append(path)
    for lang, texts in split_heldout(seed)[1].items():
        if texts:  # never part of the raw layer: honest held-out text for evaluation
            with atomic_open(out / f"heldout-{lang}.txt", "w", encoding="utf-8") as fh:
                fh.write("\n\n".join(texts) + "\n")
    kinds: dict[str, int] = {}
    for r in records:
        kinds[r["meta"]["kind"]] = kinds.get(r["meta"]["kind"], 0) + 1
    atomic_write_json(out / "raw_manifest.json", {"seed": seed, "records": len(records),
                                                  "malformed": len(_malformed_lines()), "kinds": kinds,
                                                  "files": [p.name for p in paths]})
    return paths


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m stack_common.sample_corpus OUT_DIR")
    for p in build_raw_web(sys.argv[1]):
        print(p)
