"""Language and script annotation: zh / en / code / other.

Script statistics decide by default (Han vs Latin letters, code-looking lines); a fastText
language-ID model (e.g. lid.176.bin) decides between natural languages when configured.
"""
from __future__ import annotations

import re
from functools import lru_cache

from .config import LangConfig

HAN_RE = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
KANA_HANGUL_RE = re.compile(r"[\u3040-\u30ff\uac00-\ud7af]")
LATIN_RE = re.compile(r"[A-Za-z\u00c0-\u024f]")
LETTER_RE = re.compile(r"[^\W\d_]")
CODE_SYMBOL_RE = re.compile(r"[{}\[\]();=<>]")
CODE_LINE_RE = re.compile(
    r"^\s*(?:#include|#define|import |from \S+ import|def |class |return\b|if \(|for \(|while \(|"
    r"function\b|var |let |const |public |private |package |@\w+|elif\b|else:|try:|except\b|finally:|"
    r"raise\b|yield\b|assert\b|self\.|[\w.\[\]]+\s*[-+*/|&]?=\s*\S)|[;{}]\s*$|\)\s*:\s*$|^\s*[}\])]",
    re.MULTILINE)
FASTTEXT_LANGS = {"zh": "zh", "en": "en"}


def script_stats(text: str) -> dict:
    letters = len(LETTER_RE.findall(text)) or 1
    han, latin = len(HAN_RE.findall(text)), len(LATIN_RE.findall(text))
    nonspace = len(text) - sum(text.count(c) for c in " \n\t") or 1
    lines = sum(1 for line in text.split("\n") if line.strip()) or 1
    return {
        # A Han character carries about as much as four Latin letters (one short word).
        "han_share": han / ((han + latin / 4) or 1),
        "latin_ratio": latin / letters,
        "kana_hangul_ratio": len(KANA_HANGUL_RE.findall(text)) / letters,
        "code_line_ratio": len(CODE_LINE_RE.findall(text)) / lines,
        "code_symbol_ratio": len(CODE_SYMBOL_RE.findall(text)) / nonspace,
    }


def language_from_scripts(stats: dict, cfg: LangConfig) -> str:
    if stats["code_line_ratio"] >= cfg.code_min_line_ratio and stats["code_symbol_ratio"] >= cfg.code_min_symbol_ratio:
        return "code"
    if stats["kana_hangul_ratio"] > 0.05:
        return "other"
    if stats["han_share"] >= cfg.zh_min_han_share:
        return "zh"
    if stats["latin_ratio"] >= cfg.en_min_latin_ratio:
        return "en"
    return "other"


@lru_cache(maxsize=2)
def load_fasttext(path: str):
    import fasttext

    fasttext.FastText.eprint = lambda *args, **kwargs: None  # silence the load warning
    return fasttext.load_model(path)


def fasttext_language(text: str, model, min_score: float) -> tuple[str, float]:
    labels, scores = model.predict(" ".join(text[:2000].split()), k=1)
    code = labels[0].removeprefix("__label__") if labels else ""
    score = float(scores[0]) if len(scores) else 0.0
    if score < min_score:
        return "other", score
    return FASTTEXT_LANGS.get(code.split("_")[0].lower(), "other"), score


def annotate_language(text: str, cfg: LangConfig) -> tuple[str, dict]:
    """The document's language and the facts it was decided on (kept in annotations)."""
    stats = script_stats(text)
    lang = language_from_scripts(stats, cfg)
    facts = {"han_share": round(stats["han_share"], 4), "lang_by": "script"}
    if lang != "code" and cfg.fasttext_model:
        lang, score = fasttext_language(text, load_fasttext(cfg.fasttext_model), cfg.fasttext_min_score)
        facts.update(lang_by="fasttext", lang_score=round(score, 4))
    return lang, facts
