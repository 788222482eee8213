"""English rules: Gopher quality, Gopher repetition, C4 document rules, FineWeb line rules.

Each rule takes an `EnglishText` view and the rule's thresholds (a dict from
`configs/data/rules/en.yaml`) and returns None to keep the document or the name of the
violated threshold (`<rule>.<key>`) as the reason. A threshold set to null is not checked.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Optional

from ..lines import SENTENCE_END, logical_lines
from .common import (NgramIndex, duplicate_fractions, duplicated_ngram_char_fraction, nonempty_lines, paragraphs,
                     sentence_lines, top_ngram_char_fraction)

WORD_RE = re.compile(r"[^\W_](?:[\w'’-]*\w)?")
ALPHA_TOKEN_RE = re.compile(r"\S*[^\W\d_]\S*")
BULLETS = ("•", "-", "*", "●", "·", "‣", "◦", "▪", "➢", "–")
ELLIPSES = ("...", "…")
# Residue of scripts and templates in extracted web text: JavaScript functions, variables, DOM and
# jQuery calls, arrow functions, `});`, script tags, analytics snippets, unrendered {{ }} and {% %}
# templates. Any "{" (C4's rule) would also remove every code sample, C struct and LaTeX formula;
# shell's ${VAR} and $(cmd) are not residue either.
CODE_LEFTOVER_RE = re.compile(
    r"\bfunction\s*[\w$]*\s*\([^)]*\)\s*\{|\b(?:var|let|const)\s+[\w$]+\s*=\s*[^=\s]"
    r"|\bdocument\.(?:getElement|querySelector|write|cookie|location|createElement|addEventListener)"
    r"|\bwindow\.(?:location|onload|open|addEventListener|dataLayer|setTimeout)"
    r"|\$\(\s*(?:document|window|this|function|['\"][.#]?[\w-]+['\"])\s*\)|=>\s*\{|\}\s*\)\s*;|</?script\b"
    r"|\bdataLayer\.push|\bgtag\(|_gaq\.push|\{\{[^{}\n]*\}\}|\{%[^%\n]*%\}")


class EnglishText:
    """What the English rules measure, computed once per document and only when asked."""

    def __init__(self, text: str):
        self.text = text

    @cached_property
    def words(self) -> list[str]:
        return WORD_RE.findall(self.text)

    @cached_property
    def word_chars(self) -> list[int]:
        return [len(w) for w in self.words]

    @cached_property
    def total_word_chars(self) -> int:
        return sum(self.word_chars)

    @cached_property
    def lines(self) -> list[str]:
        return nonempty_lines(self.text)

    @cached_property
    def logical_lines(self) -> list[str]:
        return logical_lines(self.text)

    @cached_property
    def tokens(self) -> int:
        return len(self.text.split())


# [[n, max character fraction], ...]: one limit per n-gram length (checked by check_ngram_limits;
# OmegaConf cannot type a list of mixed int/float pairs).
NgramLimits = Optional[list[Any]]


def check_ngram_limits(params) -> None:
    for name in ("max_top_ngram_char_ratio", "max_dup_ngram_char_ratio"):
        for pair in getattr(params, name) or []:
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and float(pair[0]).is_integer()
                    and pair[0] >= 1 and 0 <= pair[1] <= 1):
                raise ValueError(f"{name}: each item is [n >= 1, fraction in [0, 1]], got {pair!r}")


@dataclass
class GopherQualityParams:
    min_words: Optional[int] = None
    max_words: Optional[int] = None
    min_mean_word_length: Optional[float] = None
    max_mean_word_length: Optional[float] = None
    max_symbol_word_ratio: Optional[float] = None
    max_bullet_lines_ratio: Optional[float] = None
    max_ellipsis_lines_ratio: Optional[float] = None
    min_alpha_words_ratio: Optional[float] = None
    min_stop_words: Optional[int] = None
    stop_words: list[str] = field(default_factory=list)


@dataclass
class GopherRepetitionParams:
    min_dup_line_chars: int = 0          # shorter lines and paragraphs (speaker names, labels) never count as repeats
    max_dup_line_ratio: Optional[float] = None
    max_dup_para_ratio: Optional[float] = None
    max_dup_line_char_ratio: Optional[float] = None
    max_dup_para_char_ratio: Optional[float] = None
    max_top_ngram_char_ratio: NgramLimits = None
    max_dup_ngram_char_ratio: NgramLimits = None

    def __post_init__(self):
        check_ngram_limits(self)


@dataclass
class C4Params:
    lorem_ipsum: bool = False
    curly_braces: bool = False           # C4's rule: any "{" (also every code sample and formula)
    # What the brace rule was after: lines with JavaScript or template residue / non-empty lines.
    # 0.0 removes a page for one such line (C4's strictness); a book quoting code is not a web page.
    max_code_leftover_line_ratio: Optional[float] = None
    min_sentences: Optional[int] = None


@dataclass
class FinewebParams:
    min_line_punct_ratio: Optional[float] = None
    max_short_line_ratio: Optional[float] = None
    short_line_chars: int = 30
    min_dup_line_chars: int = 0          # as in GopherRepetitionParams
    max_dup_line_char_ratio: Optional[float] = None
    max_newline_word_ratio: Optional[float] = None


def _over(value, limit) -> bool:
    return limit is not None and value > limit


def _under(value, limit) -> bool:
    return limit is not None and value < limit


def gopher_quality(doc: EnglishText, p: dict) -> str | None:
    n_words = len(doc.words)
    if _under(n_words, p.get("min_words")):
        return "gopher_quality.min_words"
    if _over(n_words, p.get("max_words")):
        return "gopher_quality.max_words"
    mean_len = doc.total_word_chars / (n_words or 1)
    if _under(mean_len, p.get("min_mean_word_length")):
        return "gopher_quality.min_mean_word_length"
    if _over(mean_len, p.get("max_mean_word_length")):
        return "gopher_quality.max_mean_word_length"
    text = doc.text
    symbols = text.count("#") + text.count("...") + text.count("…")
    if _over(symbols / (n_words or 1), p.get("max_symbol_word_ratio")):
        return "gopher_quality.max_symbol_word_ratio"
    lines = doc.lines or [""]
    if _over(sum(line.startswith(BULLETS) for line in lines) / len(lines), p.get("max_bullet_lines_ratio")):
        return "gopher_quality.max_bullet_lines_ratio"
    if _over(sum(line.endswith(ELLIPSES) for line in lines) / len(lines), p.get("max_ellipsis_lines_ratio")):
        return "gopher_quality.max_ellipsis_lines_ratio"
    if _under(len(ALPHA_TOKEN_RE.findall(text)) / (doc.tokens or 1), p.get("min_alpha_words_ratio")):
        return "gopher_quality.min_alpha_words_ratio"
    if p.get("min_stop_words") is not None and not _has_stop_words(doc.words, set(p["stop_words"]), p["min_stop_words"]):
        return "gopher_quality.min_stop_words"
    return None


def _has_stop_words(words: list[str], stop_words: set[str], needed: int) -> bool:
    found = 0
    for word in words:
        if word.lower() in stop_words:
            found += 1
            if found >= needed:
                return True
    return found >= needed


def gopher_repetition(doc: EnglishText, p: dict) -> str | None:
    line_dup, line_char_dup = duplicate_fractions(doc.logical_lines, p.get("min_dup_line_chars") or 0)
    if _over(line_dup, p.get("max_dup_line_ratio")):
        return "gopher_repetition.max_dup_line_ratio"
    if _over(line_char_dup, p.get("max_dup_line_char_ratio")):
        return "gopher_repetition.max_dup_line_char_ratio"
    para_dup, para_char_dup = duplicate_fractions(paragraphs(doc.text), p.get("min_dup_line_chars") or 0)
    if _over(para_dup, p.get("max_dup_para_ratio")):
        return "gopher_repetition.max_dup_para_ratio"
    if _over(para_char_dup, p.get("max_dup_para_char_ratio")):
        return "gopher_repetition.max_dup_para_char_ratio"
    return ngram_repetition(doc.words, doc.word_chars, doc.total_word_chars, p, "gopher_repetition")


def ngram_repetition(units, unit_chars, total_chars: int, p: dict, rule: str) -> str | None:
    """Top n-gram and duplicated n-gram character fractions (shared by the English and Chinese rules)."""
    top_limits = p.get("max_top_ngram_char_ratio") or []
    limits = sorted(p.get("max_dup_ngram_char_ratio") or [])
    if not top_limits and not limits:
        return None
    index = NgramIndex(units, unit_chars)
    for n, limit in top_limits:
        if _over(top_ngram_char_fraction(index, int(n), total_chars), limit):
            return f"{rule}.max_top_ngram_char_ratio"
    for k, (n, limit) in enumerate(limits):
        fraction = duplicated_ngram_char_fraction(index, int(n), total_chars)
        if _over(fraction, limit):
            return f"{rule}.max_dup_ngram_char_ratio"
        # Longer duplicated n-grams cover no more text than shorter ones: stop once below every limit left.
        if fraction <= min(lim for _, lim in limits[k:]):
            break
    return None


def c4(doc: EnglishText, p: dict) -> str | None:
    lowered = doc.text.lower()
    if p.get("lorem_ipsum") and "lorem ipsum" in lowered:
        return "c4.lorem_ipsum"
    if p.get("curly_braces") and "{" in doc.text:
        return "c4.curly_braces"
    if p.get("max_code_leftover_line_ratio") is not None and CODE_LEFTOVER_RE.search(doc.text):
        residue = sum(1 for line in doc.lines if CODE_LEFTOVER_RE.search(line))
        if residue / (len(doc.lines) or 1) > p["max_code_leftover_line_ratio"]:
            return "c4.max_code_leftover_line_ratio"
    if p.get("min_sentences") is not None:
        sentences = len(re.findall(r"[.!?]+(?:\s|$)", doc.text))
        if sentences < p["min_sentences"]:
            return "c4.min_sentences"
    return None


def fineweb(doc: EnglishText, p: dict) -> str | None:
    lines = doc.logical_lines or [""]
    sentences = sentence_lines(lines)
    if _under(sum(line.endswith(SENTENCE_END) for line in sentences) / len(sentences), p.get("min_line_punct_ratio")):
        return "fineweb.min_line_punct_ratio"
    short = p.get("short_line_chars", 30)
    if _over(sum(len(line) <= short for line in sentences) / len(sentences), p.get("max_short_line_ratio")):
        return "fineweb.max_short_line_ratio"
    if p.get("max_dup_line_char_ratio") is not None:
        _, dup_chars = duplicate_fractions(lines, p.get("min_dup_line_chars") or 0)
        if dup_chars > p["max_dup_line_char_ratio"]:
            return "fineweb.max_dup_line_char_ratio"
    if _over(doc.text.count("\n") / (len(doc.words) or 1), p.get("max_newline_word_ratio")):
        return "fineweb.max_newline_word_ratio"
    return None


RULES = {"gopher_quality": (gopher_quality, GopherQualityParams),
         "gopher_repetition": (gopher_repetition, GopherRepetitionParams),
         "c4": (c4, C4Params), "fineweb": (fineweb, FinewebParams)}
