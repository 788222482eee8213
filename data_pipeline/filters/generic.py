"""Rules for code and for languages without a rule set of their own: length and line shape."""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from typing import Optional

from .english import _over, _under

LETTER_RE = re.compile(r"[^\W\d_]")


class PlainText:
    def __init__(self, text: str):
        self.text = text

    @cached_property
    def lines(self) -> list[str]:
        return self.text.split("\n")


@dataclass
class LengthParams:
    min_chars: Optional[int] = None
    max_chars: Optional[int] = None


@dataclass
class CodeParams:
    max_line_chars: Optional[int] = None
    max_mean_line_chars: Optional[float] = None
    min_alpha_ratio: Optional[float] = None


def length(doc: PlainText, p: dict) -> str | None:
    if _under(len(doc.text), p.get("min_chars")):
        return "length.min_chars"
    if _over(len(doc.text), p.get("max_chars")):
        return "length.max_chars"
    return None


def code(doc: PlainText, p: dict) -> str | None:
    """Minified or generated files: very long lines, little alphabetic content."""
    lines = doc.lines
    if _over(max(map(len, lines), default=0), p.get("max_line_chars")):
        return "code.max_line_chars"
    if _over(len(doc.text) / (len(lines) or 1), p.get("max_mean_line_chars")):
        return "code.max_mean_line_chars"
    if _under(len(LETTER_RE.findall(doc.text)) / (len(doc.text) or 1), p.get("min_alpha_ratio")):
        return "code.min_alpha_ratio"
    return None


RULES = {"length": (length, LengthParams), "code": (code, CodeParams)}
