"""Near-duplicate benchmark with ground truth independent of the dedup stage, and scale corpora.

Built from ../shared/corpus (real text, benchmarks only). A *family* is one real document and the
versions derived from it:
  * zh_CN / zh_TW page pairs (manpages, libreoffice-help, debian-handbook, debian-reference,
    maint-guide): the zh_TW page converted to simplified script (zhconv or opencc, run in a
    separate interpreter given by --convert-python, not a project dependency), sometimes with a
    perturbed copy of the zh_CN page too;
  * real documents and perturbed copies: edits of characters / words (1 in 500 to 1 in 7),
    reflowed lines, half-width punctuation, truncation, paragraph swaps, added web boilerplate;
  * every other sampled corpus document is background (a family of one).
Each family gets a language class by script (`script_class`: zh, mixed zh + Latin, en) and a split
(`split_of`: "tune" or "held", by a hash of the family key, so a page and its versions stay together).

Ground truth (`truth_jaccard`), written here without any code of data_pipeline:
  text -> NFKC (full-width letters and punctuation are their ASCII forms); whitespace runs become one
  space; a space next to a CJK character is dropped (Chinese is written without spaces, so a
  re-wrapped line or a space before a command changes nothing); no case or punctuation folding.
  Then the Jaccard similarity of the sets of character 5-grams of the whole text (a text of at most
  5 characters is one gram). A pair is a near duplicate iff that Jaccard >= 0.8. Why characters
  for every language: it needs no word segmenter, treats Chinese, commands inside Chinese text and
  English alike, and is the definition the issue's held-back benchmark used.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import random
import re
import subprocess
import unicodedata
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from data_pipeline.schema import DOC_SCHEMA
from stack_common.atomic import atomic_path
from stack_common.shards import ShardWriter, write_table

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
PAIRED = ["debian-handbook", "debian-reference", "libreoffice-help", "manpages", "maint-guide"]
MAX_CHARS = 20_000          # longer documents (whole books) are cut so the exact Jaccard stays cheap
TRUTH_NGRAM = 5
TRUTH_THRESHOLD = 0.8
LANGS = ("zh", "mixed", "en")

# ---- ground truth ---------------------------------------------------------------------------------

_CJK_CLASS = r"\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\u3000-\u303f\uff00-\uffef"
_SPACES = re.compile(r"\s+")
_SPACE_BY_CJK = re.compile(rf"(?<=[{_CJK_CLASS}]) | (?=[{_CJK_CLASS}])")
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN = re.compile(r"[A-Za-z]")


def truth_text(text: str) -> str:
    """The minimal normalization of the ground truth (see the module docstring)."""
    return _SPACE_BY_CJK.sub("", _SPACES.sub(" ", unicodedata.normalize("NFKC", text)).strip())


def char_ngrams(text: str, n: int = TRUTH_NGRAM) -> set[str]:
    t = truth_text(text)
    if len(t) <= n:
        return {t} if t else set()
    return {t[i:i + n] for i in range(len(t) - n + 1)}


def jaccard(a: set, b: set) -> float:
    if not a or not b:
        return 0.0
    inter = len(a & b)
    return inter / (len(a) + len(b) - inter)


def truth_jaccard(a: str, b: str) -> float:
    return jaccard(char_ngrams(a), char_ngrams(b))


def script_class(text: str) -> str:
    """zh: Han >= 60 % of Han + Latin letters; mixed: 5-60 %; en: below 5 %."""
    han, latin = len(_HAN.findall(text)), len(_LATIN.findall(text))
    share = han / max(1, han + latin)
    return "zh" if share >= 0.6 else "mixed" if share >= 0.05 else "en"


def split_of(family: str) -> str:
    return "tune" if hashlib.blake2b(family.encode(), digest_size=8).digest()[0] % 2 == 0 else "held"


# ---- perturbations -----------------------------------------------------------------------------------

_TOKEN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]|[A-Za-z0-9_]+|\s+|.", re.S)
_HALF = {"，": ",", "：": ":", "；": ";", "（": "(", "）": ")", "！": "!", "？": "?"}   # full -> half width
BOILER_EN = ["Home | About | Contact | Privacy Policy", "Share this page on Twitter, Facebook or by e-mail",
             "Copyright (c) 2024 Example Docs. All rights reserved.", "Subscribe to our newsletter for updates.",
             "Was this page helpful? Yes / No", "Skip to main content"]
BOILER_ZH = ["首页 | 关于我们 | 联系我们 | 隐私政策", "版权所有 © 2024 保留所有权利", "扫描二维码关注我们的微信公众号",
             "本站部分内容来自网络，如有侵权请联系删除", "上一篇：Linux 常用命令 下一篇：Shell 脚本入门", "分享到：微博 微信 QQ空间"]


def edit_tokens(text: str, rate: float, rng: random.Random) -> str:
    """Replace, delete or insert about `rate` of the non-space tokens (a Han character, a Latin word,
    a symbol); replacements and insertions are tokens of the same document."""
    toks = _TOKEN.findall(text)
    words = [i for i, t in enumerate(toks) if not t.isspace()]
    if not words:
        return text
    for i in rng.sample(words, max(1, min(len(words), round(len(words) * rate)))):
        op, other = rng.random(), toks[rng.choice(words)]
        toks[i] = other if op < 0.5 else "" if op < 0.75 else toks[i] + (" " + other if toks[i].isascii() else other)
    return "".join(toks)


def reflow(text: str, rng: random.Random) -> str:
    """Join each paragraph's lines and wrap it again at another width: at a space in Latin text,
    before any Han character in Chinese."""
    width = rng.randint(30, 90)
    out = []
    for para in re.split(r"\n\s*\n", text):
        line, lines = "", []
        for tok in _TOKEN.findall(" ".join(part.strip() for part in para.splitlines() if part.strip())):
            if len(line) >= width and (tok == " " or _HAN.match(tok)):
                lines.append(line)
                line = "" if tok == " " else tok
            else:
                line += tok
        out.append("\n".join(lines + [line]))
    return "\n\n".join(out)


def half_width(text: str, rng: random.Random) -> str:
    return "".join(_HALF.get(c, c) if rng.random() < 0.8 else c for c in text)


def truncate(text: str, rng: random.Random) -> str:
    keep = int(len(text) * rng.uniform(0.7, 0.97))
    cut = text.rfind("\n", 0, keep)
    return text[:cut if cut > keep // 2 else keep]


def swap_paragraphs(text: str, rng: random.Random) -> str:
    paras = text.split("\n")
    for _ in range(2):
        if len(paras) >= 2:
            i, j = rng.sample(range(len(paras)), 2)
            paras[i], paras[j] = paras[j], paras[i]
    return "\n".join(paras)


def add_boilerplate(text: str, lang: str, rng: random.Random) -> str:
    pool = BOILER_EN if lang == "en" else BOILER_ZH
    return "\n".join(rng.sample(pool, 2)) + "\n" + text + "\n" + "\n".join(rng.sample(pool, 2))


def perturbed_copy(text: str, lang: str, rng: random.Random) -> tuple[str, str]:
    """A version of `text` as it might be found again on the web, and the name of the change."""
    # Character-level edits hurt 5-grams more in Chinese (a word is 1-3 characters) than in English.
    top = 0.06 if lang != "en" else 0.14
    kind = rng.choice(["edit", "edit", "edit", "reflow", "truncate", "swap", "boilerplate"])
    if kind == "edit":
        text = edit_tokens(text, rng.uniform(0.002, top), rng)
    elif kind == "reflow":
        text = reflow(text, rng)
        text = half_width(text, rng) if lang != "en" and rng.random() < 0.5 else text
    elif kind == "truncate":
        text = truncate(text, rng)
    elif kind == "swap":
        text = edit_tokens(swap_paragraphs(text, rng), 0.005, rng)
    else:
        text = edit_tokens(add_boilerplate(text, lang, rng), rng.uniform(0.0, top / 4), rng)
    return text, kind


# ---- building ------------------------------------------------------------------------------------------

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


def _page_pairs(docs: list[dict], convert_python: str) -> list[tuple[dict, dict]]:
    """(zh_CN page, zh_TW page converted to simplified) for every page both packages ship."""
    by_key: dict = {}
    for d in docs:
        if any(d["source"].startswith(p) for p in PAIRED) and d["lang"] == "zh" and len(d["text"]) >= 200:
            by_key.setdefault(_page_key(d["source"], d["path"]), []).append(d)
    pairs = []
    for group in by_key.values():
        cn = [d for d in group if not d["source"].endswith("-zhtw")]
        tw = [d for d in group if d["source"].endswith("-zhtw")]
        if len(cn) == 1 and len(tw) == 1:
            pairs.append((cn[0], tw[0]))
    converted = convert_to_simplified([tw["text"] for _, tw in pairs], convert_python)
    return [(cn, {**tw, "text": text}) for (cn, tw), text in zip(pairs, converted)]


def build_families(convert_python: str, originals_per_lang: int = 700, background: int = 4000,
                   seed: int = 0) -> list[dict]:
    """Every benchmark document with its family, role, language class and split."""
    rng = random.Random(seed)
    docs = load_corpus()
    out: list[dict] = []

    def add(doc: dict, family: str, lang: str, role: str) -> None:
        out.append({"id": doc["id"], "text": doc["text"], "source": doc["source"], "family": family,
                    "lang": lang, "role": role, "split": split_of(family)})

    used = set()
    for cn, tw in _page_pairs(docs, convert_python):
        lang, family = script_class(cn["text"]), cn["id"]
        add(cn, family, lang, "original")
        add(tw, family, lang, "zh_tw")
        used |= {cn["id"], tw["id"]}
        if rng.random() < 0.5:
            text, kind = perturbed_copy(cn["text"], lang, rng)
            add({**cn, "id": f"{cn['id']}/copy", "text": text}, family, lang, kind)
    pools: dict = {lang: [] for lang in LANGS}
    for d in docs:
        if d["id"] not in used and len(d["text"]) >= 300 and not d["source"].endswith("-zhtw"):
            pools[script_class(d["text"])].append(d)
    for lang, pool in pools.items():
        for orig in rng.sample(pool, min(originals_per_lang, len(pool))):
            used.add(orig["id"])
            add(orig, orig["id"], lang, "original")
            for k in range(rng.choice([1, 1, 2])):
                text, kind = perturbed_copy(orig["text"], lang, rng)
                add({**orig, "id": f"{orig['id']}/copy-{k}", "text": text}, orig["id"], lang, kind)
    rest = [d for d in docs if d["id"] not in used and len(d["text"]) >= 200 and not d["source"].endswith("-zhtw")]
    for d in rng.sample(rest, min(background, len(rest))):
        add(d, d["id"], script_class(d["text"]), "background")
    rng.shuffle(out)
    return out


def family_pairs(members: list[dict]) -> list[dict]:
    """Every pair inside a family, with its ground-truth Jaccard."""
    by_family: dict = {}
    for m in members:
        by_family.setdefault(m["family"], []).append(m)
    labels = []
    for family, group in by_family.items():
        grams = {m["id"]: char_ngrams(m["text"]) for m in group}
        for a, b in itertools.combinations(group, 2):
            labels.append({"a": a["id"], "b": b["id"], "family": family, "lang": a["lang"], "split": a["split"],
                           "kind": "+".join(sorted({a["role"], b["role"]} - {"original"})),
                           "jaccard": jaccard(grams[a["id"]], grams[b["id"]])})
    return labels


def build_benchmark(out_dir: Path, convert_python: str, seed: int = 0) -> dict:
    """Write out_dir/docs (shard dir), out_dir/members.parquet (family, role, language class and
    split of every document) and out_dir/labels.parquet (family pairs); return a summary."""
    members = build_families(convert_python, seed=seed)
    labels = family_pairs(members)
    table = pa.Table.from_pylist([{"id": m["id"], "text": m["text"], "lang": "en" if m["lang"] == "en" else "zh",
                                   "source": m["source"], "quality_score": None, "annotations": "{}"}
                                  for m in members], schema=DOC_SCHEMA)
    write_table(out_dir / "docs", table, target_bytes=16 << 20)
    # members.parquet last: its presence marks a complete benchmark
    for name, rows in (("labels", labels), ("members", [{k: v for k, v in m.items() if k != "text"} for m in members])):
        with atomic_path(out_dir / f"{name}.parquet") as tmp:
            pq.write_table(pa.Table.from_pylist(rows), tmp)
    return {"docs": len(members), "families": len({m["family"] for m in members}), "pairs": len(labels)}


def build_scale(out_dir: Path, n_docs: int, seed: int = 0, max_chars: int = 600) -> None:
    """n_docs documents sampled from the corpus (windows of at most max_chars), half of them
    perturbed copies: a dup-heavy web-like mix."""
    rng = random.Random(seed)
    base = [d for d in load_corpus() if len(d["text"]) >= 200]
    with ShardWriter(out_dir, DOC_SCHEMA, prefix="scale", target_bytes=64 << 20) as writer:
        rows = []
        for i in range(n_docs):
            d = base[rng.randrange(len(base))]
            start = rng.randrange(max(1, len(d["text"]) - max_chars))
            text = d["text"][start:start + max_chars]
            if rng.random() < 0.5:
                text = perturbed_copy(text, "en" if d["lang"] == "en" else "zh", rng)[0]
            rows.append({"id": f"s{i}", "text": text, "lang": d["lang"], "source": d["source"],
                         "quality_score": round(rng.random(), 3), "annotations": "{}"})
            if len(rows) == 20_000:
                writer.write(pa.Table.from_pylist(rows, schema=DOC_SCHEMA))
                rows = []
        if rows:
            writer.write(pa.Table.from_pylist(rows, schema=DOC_SCHEMA))
