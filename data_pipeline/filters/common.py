"""Text statistics the rules share: duplicated lines/paragraphs and n-gram repetition.

Each helper works on a sequence of units (words for English, characters for Chinese) and
returns fractions in [0, 1]; the rules compare them with thresholds from the YAML.
"""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np

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


class NgramIndex:
    """A document's n-grams as dense integer ids, exact (no hashing): unit ids first (a word's id
    is the order of its first occurrence, a character's its code point, ranked when unigrams are
    asked for), then the id of an n-gram is the rank of the pair (id of its (n-1)-gram prefix, id
    of its last unit) among the document's distinct pairs. Built up one n at a time and shared by
    every n-gram rule of a document; numpy does the counting that tuples in a Counter did."""

    def __init__(self, units: Sequence, unit_chars: Sequence[int] | None = None):
        if isinstance(units, str):      # characters (Chinese): one character per unit
            ids = np.frombuffer(units.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
            self.unit_chars = None
        else:
            first_seen: dict = {}
            ids = np.fromiter((first_seen.setdefault(u, len(first_seen)) for u in units), np.int64, len(units))
            self.unit_chars = np.asarray(unit_chars if unit_chars is not None else [len(u) for u in units], np.int64)
        self.units = ids.astype(np.int64)
        self.grams = {} if self.unit_chars is None else {1: self.units}
        self.all_distinct: set[int] = set()

    def __len__(self) -> int:
        return len(self.units)

    def gram_ids(self, n: int) -> np.ndarray:
        """Id of the n-gram starting at each position (len(units) - n + 1 of them), dense: every id
        below the number of distinct n-grams."""
        if n not in self.grams:
            if n == 1:                              # characters: code points, made dense
                self.grams[1] = np.unique(self.units, return_inverse=True)[1].reshape(-1).astype(np.int64)
                return self.grams[1]
            prefix = (self.units if n == 2 else self.gram_ids(n - 1))[:-1]
            if n - 1 in self.all_distinct:          # then so are the longer n-grams: any dense numbering does
                self.grams[n] = np.arange(len(prefix), dtype=np.int64)
                self.all_distinct.add(n)
            else:
                pairs = (prefix << 32) | self.units[n - 1:]     # both < 2**31: the pair fits in an int64
                self.grams[n] = np.unique(pairs, return_inverse=True)[1].reshape(-1).astype(np.int64)
                if len(pairs) and self.grams[n].max() + 1 == len(pairs):
                    self.all_distinct.add(n)
        return self.grams[n]

    def gram_chars(self, n: int, start: int) -> int:
        if self.unit_chars is None:
            return n
        return int(self.unit_chars[start:start + n].sum())


def top_ngram_char_fraction(index: NgramIndex, n: int, total_chars: int) -> float:
    """Characters covered by the most frequent n-gram (if it occurs twice or more) / all characters.
    Of n-grams equally frequent, the one that occurs first counts."""
    if len(index) < n:
        return 0.0
    ids = index.gram_ids(n)
    counts = np.bincount(ids)
    count = int(counts.max())
    if count < 2:
        return 0.0
    first = int(np.flatnonzero(counts[ids] == count)[0])
    return min(1.0, count * index.gram_chars(n, first) / (total_chars or 1))   # overlaps can exceed 1


def duplicated_ngram_char_fraction(index: NgramIndex, n: int, total_chars: int) -> float:
    """Characters inside n-grams that repeat an earlier, non-overlapping occurrence / all characters."""
    if len(index) < n:
        return 0.0
    ids = index.gram_ids(n)
    distinct = int(ids.max()) + 1
    if distinct == len(ids):
        return 0.0
    seen = bytearray(distinct)
    covered = bytearray(len(index))
    block = b"\x01" * n
    grams = ids.tolist()
    i = 0
    while i < len(grams):
        if seen[grams[i]]:
            covered[i:i + n] = block
            i += n
        else:
            seen[grams[i]] = 1
            i += 1
    if index.unit_chars is None:
        return covered.count(1) / (total_chars or 1)
    hit = np.frombuffer(covered, dtype=np.uint8).astype(bool)
    return int(index.unit_chars[hit].sum()) / (total_chars or 1)


def sentence_lines(lines: list[str]) -> list[str]:
    """The lines that may be judged as sentences: table rows and rulings are cells, not sentences
    (all lines when every one is a table row)."""
    return [line for line in lines if not TABLE_ROW_RE.match(line)] or lines


def nonempty_lines(text: str) -> list[str]:
    return [line.strip() for line in text.split("\n") if line.strip()]


def paragraphs(text: str) -> list[str]:
    return [p.strip() for p in PARAGRAPH_SPLIT_RE.split(text) if p.strip()]
