"""Text statistics the rules share: duplicated lines/paragraphs and n-gram repetition.

Each helper works on a sequence of units (words for English, characters for Chinese) and
returns fractions in [0, 1]; the rules compare them with thresholds from the YAML.
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Sequence

from ..lines import TABLE_ROW_RE

PARAGRAPH_SPLIT_RE = re.compile(r"\n{2,}")
ALNUM_RE = re.compile(r"[^\W_]")


def duplicate_fractions(items: Sequence[str], min_chars: int = 0) -> tuple[float, float]:
    """(share of items that repeat an earlier one, share of characters in those repeats).

    Layout (items without a letter or digit: table rulings, `* * *`) and items shorter than
    `min_chars` (a play's speaker names, headings such as "Note") may repeat: they never count
    as repeats, only in the totals."""
    seen: set[str] = set()
    dup_items = dup_chars = total_chars = 0
    for item in items:
        total_chars += len(item)
        if len(item) < min_chars or not ALNUM_RE.search(item):
            continue
        if item in seen:
            dup_items += 1
            dup_chars += len(item)
        else:
            seen.add(item)
    return dup_items / (len(items) or 1), dup_chars / (total_chars or 1)


def ngrams(units: Sequence, n: int) -> list:
    if isinstance(units, str):
        return [units[i:i + n] for i in range(len(units) - n + 1)]
    return list(zip(*(units[i:] for i in range(n))))


def top_ngram_char_fraction(units: Sequence, n: int, total_chars: int) -> float:
    """Characters covered by the most frequent n-gram (if it occurs twice or more) / all characters."""
    grams = ngrams(units, n)
    if not grams:
        return 0.0
    gram, count = Counter(grams).most_common(1)[0]
    if count < 2:
        return 0.0
    gram_chars = len(gram) if isinstance(gram, str) else sum(map(len, gram))
    return min(1.0, count * gram_chars / (total_chars or 1))   # overlapping occurrences can exceed 1


def duplicated_ngram_char_fraction(units: Sequence, n: int, unit_chars: Sequence[int] | None,
                                   total_chars: int) -> float:
    """Characters inside n-grams that repeat an earlier, non-overlapping occurrence / all characters.
    `unit_chars` None means every unit is one character (Chinese)."""
    grams = ngrams(units, n)
    if len(set(grams)) == len(grams):
        return 0.0
    seen: set = set()
    covered = bytearray(len(units))
    block = b"\x01" * n
    i = 0
    while i < len(grams):
        if grams[i] in seen:
            covered[i:i + n] = block
            i += n
        else:
            seen.add(grams[i])
            i += 1
    if unit_chars is None:
        return covered.count(1) / (total_chars or 1)
    return sum(c for c, hit in zip(unit_chars, covered) if hit) / (total_chars or 1)




def sentence_lines(lines: list[str]) -> list[str]:
    """The lines that may be judged as sentences: table rows and rulings are cells, not sentences
    (all lines when every one is a table row)."""
    return [line for line in lines if not TABLE_ROW_RE.match(line)] or lines


def nonempty_lines(text: str) -> list[str]:
    return [line.strip() for line in text.split("\n") if line.strip()]


def paragraphs(text: str) -> list[str]:
    return [p.strip() for p in PARAGRAPH_SPLIT_RE.split(text) if p.strip()]
