"""Chinese rules: they count characters, not space-separated words.

Same contract as the English rules: `rule(ChineseText, thresholds) -> None | "<rule>.<key>"`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Optional

from ..char_classes import HAN_RE
from .common import duplicate_fractions, nonempty_lines, sentence_lines
from .english import NgramLimits, _over, _under, check_ngram_limits, ngram_repetition
from .generic import LengthParams

SPACE_RE = re.compile(r"\s+")
NON_CONTENT_RE = re.compile(r"[\W_]+")
DIGIT_RE = re.compile(r"[0-9０-９]")
PUNCT_RE = re.compile(r"[，。！？；：、“”‘’（）《》〈〉【】「」『』…—～·,.!?;:()\"'\[\]<>\-~]")
CHAR_RUN_RE = re.compile(r"([^\W\d_])\1+")   # a letter or Han character repeated ("啊啊啊")
ZH_TERMINAL = ("。", "！", "？", "…", "”", "」", "』", "；", "：", "!", "?", ".", "）", ")")


@dataclass
class CharactersParams:
    min_han_ratio: Optional[float] = None
    max_digit_ratio: Optional[float] = None
    min_punct_ratio: Optional[float] = None
    max_punct_ratio: Optional[float] = None


@dataclass
class RepetitionParams:
    min_dup_line_chars: int = 0          # shorter lines never count as repeats (see common.duplicate_fractions)
    max_char_run: Optional[int] = None
    max_dup_line_ratio: Optional[float] = None
    max_dup_line_char_ratio: Optional[float] = None
    max_top_ngram_char_ratio: NgramLimits = None
    max_dup_ngram_char_ratio: NgramLimits = None

    def __post_init__(self):
        check_ngram_limits(self)


@dataclass
class BoilerplateParams:
    max_keyword_char_ratio: Optional[float] = None
    keywords: list[str] = field(default_factory=list)


@dataclass
class LinesParams:
    min_line_punct_ratio: Optional[float] = None
    max_short_line_ratio: Optional[float] = None
    short_line_chars: int = 5


class ChineseText:
    def __init__(self, text: str):
        self.text = text

    @cached_property
    def chars(self) -> str:
        """The document without whitespace: the unit Chinese rules count."""
        return SPACE_RE.sub("", self.text)

    @cached_property
    def lines(self) -> list[str]:
        return nonempty_lines(self.text)

    @cached_property
    def content_chars(self) -> str:
        """Letters, digits and Han characters only: repeated table rulings (─┼─) and punctuation
        are layout, not repeated phrases."""
        return NON_CONTENT_RE.sub("", self.text)


def length(doc: ChineseText, p: dict) -> str | None:
    if _under(len(doc.chars), p.get("min_chars")):
        return "length.min_chars"
    if _over(len(doc.chars), p.get("max_chars")):
        return "length.max_chars"
    return None


def characters(doc: ChineseText, p: dict) -> str | None:
    n = len(doc.chars) or 1
    if _under(len(HAN_RE.findall(doc.chars)) / n, p.get("min_han_ratio")):
        return "characters.min_han_ratio"
    if _over(len(DIGIT_RE.findall(doc.chars)) / n, p.get("max_digit_ratio")):
        return "characters.max_digit_ratio"
    punct = len(PUNCT_RE.findall(doc.chars)) / n
    if _under(punct, p.get("min_punct_ratio")):
        return "characters.min_punct_ratio"
    if _over(punct, p.get("max_punct_ratio")):
        return "characters.max_punct_ratio"
    return None


def repetition(doc: ChineseText, p: dict) -> str | None:
    if p.get("max_char_run") is not None:
        longest = max((len(m.group(0)) for m in CHAR_RUN_RE.finditer(doc.chars)), default=1)
        if longest > p["max_char_run"]:
            return "repetition.max_char_run"
    line_dup, line_char_dup = duplicate_fractions(doc.lines, p.get("min_dup_line_chars") or 0)
    if _over(line_dup, p.get("max_dup_line_ratio")):
        return "repetition.max_dup_line_ratio"
    if _over(line_char_dup, p.get("max_dup_line_char_ratio")):
        return "repetition.max_dup_line_char_ratio"
    chars = doc.content_chars
    return ngram_repetition(chars, None, len(chars), p, "repetition")


def boilerplate(doc: ChineseText, p: dict) -> str | None:
    keywords = p.get("keywords") or []
    if not keywords or p.get("max_keyword_char_ratio") is None:
        return None
    pattern = _keyword_re(tuple(keywords))
    hit_chars = sum(len(m) for m in pattern.findall(doc.chars))
    if hit_chars / (len(doc.chars) or 1) > p["max_keyword_char_ratio"]:
        return "boilerplate.max_keyword_char_ratio"
    return None


_KEYWORD_CACHE: dict[tuple, re.Pattern] = {}


def _keyword_re(keywords: tuple) -> re.Pattern:
    if keywords not in _KEYWORD_CACHE:
        _KEYWORD_CACHE[keywords] = re.compile("|".join(map(re.escape, sorted(keywords, key=len, reverse=True))))
    return _KEYWORD_CACHE[keywords]


def lines(doc: ChineseText, p: dict) -> str | None:
    lines_ = sentence_lines(doc.lines or [""])
    if _under(sum(line.endswith(ZH_TERMINAL) for line in lines_) / len(lines_), p.get("min_line_punct_ratio")):
        return "lines.min_line_punct_ratio"
    short = p.get("short_line_chars", 5)
    if _over(sum(len(line) <= short for line in lines_) / len(lines_), p.get("max_short_line_ratio")):
        return "lines.max_short_line_ratio"
    return None


RULES = {"length": (length, LengthParams), "characters": (characters, CharactersParams),
         "repetition": (repetition, RepetitionParams), "boilerplate": (boilerplate, BoilerplateParams),
         "lines": (lines, LinesParams)}
