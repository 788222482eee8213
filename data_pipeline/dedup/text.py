"""Text normalization, shingling and unit splitting shared by the dedup stages.

Two kinds of MinHash shingles:
  * character n-grams (the default) of `shingle_codes(text)`: width and case folded, whitespace
    runs one space, no space next to a CJK character, punctuation kept. The same measure for
    Chinese, commands inside Chinese text and English, with no word segmenter.
  * token n-grams (`shingle_hashes`, the older setting): a token is one CJK character or a maximal
    run of other non-space characters, punctuation folded away. A Latin run weighs as much as one
    Chinese character, so edited Chinese and mixed zh + Latin copies score low.
Each shingle is hashed as the substring it spans (polynomial hash, vectorized with numpy), so
hashing costs no Python call per shingle.
"""
from __future__ import annotations

import hashlib
import re
import sys
import unicodedata

import numpy as np

# Lookup tables over all code points keep the folding vectorized. Whitespace: separators (Z*) and
# control characters. Separators for `normalize`: whitespace, punctuation and symbols all fold to
# one space: "Hello,  world!" == "hello world".
_CATEGORY = np.array([unicodedata.category(chr(cp)) for cp in range(sys.maxunicode + 1)])
_WHITESPACE = (_CATEGORY.view("<U1")[::2] == "Z") | (_CATEGORY == "Cc")
_SEPARATOR = _WHITESPACE | np.isin(_CATEGORY.view("<U1")[::2], ["P", "S"])
del _CATEGORY
# Scripts written without spaces (Chinese, kana, hangul): every character is a token.
_CJK = np.zeros(sys.maxunicode + 1, dtype=bool)
for _lo, _hi in [(0x3040, 0x30FF), (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xAC00, 0xD7AF), (0xF900, 0xFAFF),
                 (0x20000, 0x3134F)]:
    _CJK[_lo:_hi + 1] = True
_NO_SPACE_BESIDE = _CJK.copy()
_NO_SPACE_BESIDE[0x3000:0x3040] = True                 # CJK symbols and punctuation (。、「」)
# Sentence ends: Chinese full stops always, Latin ones only before whitespace (not in "3.14").
_SENTENCE_END = re.compile(r"(?<=[。！？；!?])|(?<=\.)(?=\s)")

_P = np.uint64(0x100000001B3)          # odd multiplier of the rolling hash
_MIX = np.uint64(0x9E3779B97F4A7C15)   # odd constant that spreads the high bits


def _lower_nfkc_codes(text: str) -> np.ndarray:
    if not unicodedata.is_normalized("NFKC", text):
        text = unicodedata.normalize("NFKC", text)
    return np.frombuffer(text.lower().encode("utf-32-le"), dtype=np.uint32)


def _fold_runs(codes: np.ndarray, fold: np.ndarray) -> np.ndarray:
    """Each run of folded characters becomes one space; no space at the end."""
    first_of_run = ~np.concatenate([[True], fold[:-1]])       # a folded character after another goes
    out = np.where(fold, np.uint32(32), codes)[~fold | first_of_run]
    return out[:-1] if len(out) and out[-1] == 32 else out


def normalized_codes(text: str) -> np.ndarray:
    """Code points of the text with width (NFKC), case, punctuation and whitespace folded."""
    codes = _lower_nfkc_codes(text)
    return _fold_runs(codes, _SEPARATOR[codes])


def shingle_codes(text: str) -> np.ndarray:
    """The text the character shingles are taken on: width (NFKC) and case folded, whitespace runs
    one space, no space next to a CJK character or CJK punctuation (Chinese is written without
    spaces, so re-wrapped lines or a space before a command change nothing), punctuation kept."""
    codes = _lower_nfkc_codes(text)
    codes = _fold_runs(codes, _WHITESPACE[codes])
    space, tight = codes == 32, _NO_SPACE_BESIDE[codes]
    beside = np.concatenate([[True], tight[:-1]]) | np.concatenate([tight[1:], [False]])
    return codes[~(space & beside)]                          # [True]: a leading space goes too


def char_shingle_hashes(text: str, ngram: int) -> np.ndarray:
    """32-bit hashes of the character n-grams of `shingle_codes(text)` (one hash for shorter texts)."""
    codes = shingle_codes(text)
    if len(codes) == 0:
        return np.zeros(0, dtype=np.uint32)
    first = np.arange(max(1, len(codes) - ngram + 1))
    return _span_hashes(codes, first, np.minimum(first + ngram, len(codes)))


def char_ngram_hashes(text: str, sizes: range) -> np.ndarray:
    """32-bit hashes of the character n-grams of every size in `sizes` of `shingle_codes(text)`
    (semantic dedup's features; a text shorter than n gives one hash of its whole self)."""
    codes = shingle_codes(text)
    if len(codes) == 0:
        return np.zeros(0, dtype=np.uint32)
    parts = []
    for n in sizes:
        first = np.arange(max(1, len(codes) - n + 1))
        parts.append(_span_hashes(codes, first, np.minimum(first + n, len(codes))))
    return np.concatenate(parts)


def normalize(text: str) -> str:
    """The form every hash is taken on (see normalized_codes)."""
    return normalized_codes(text).tobytes().decode("utf-32-le")


def text_digest(text: str, size: int = 16) -> bytes:
    """Hash of the normalized text (exact dedup keys)."""
    return hashlib.blake2b(normalize(text).encode("utf-8"), digest_size=size).digest()


_POWERS: dict[int, tuple[np.ndarray, np.ndarray]] = {}   # base -> (base**i, base**-i) mod 2**64


def _powers(base: np.uint64, n: int) -> tuple[np.ndarray, np.ndarray]:
    """base**i and base**-i mod 2**64 for i < n (base is odd, so it has an inverse); grown on demand."""
    power, inv = _POWERS.get(int(base), (np.ones(1, np.uint64), np.ones(1, np.uint64)))
    if len(power) < n:
        size = max(n, 2 * len(power))
        inverse = np.uint64(pow(int(base), -1, 1 << 64))
        with np.errstate(over="ignore"):
            power, inv = np.ones(size, dtype=np.uint64), np.ones(size, dtype=np.uint64)
            np.cumprod(np.full(size - 1, base, dtype=np.uint64), dtype=np.uint64, out=power[1:])
            np.cumprod(np.full(size - 1, inverse, dtype=np.uint64), dtype=np.uint64, out=inv[1:])
        _POWERS[int(base)] = power, inv
    return power[:n], inv[:n]


def span_hashes(values: np.ndarray, first: np.ndarray, last: np.ndarray, base: np.uint64 = _P,
                bits: int = 64) -> np.ndarray:
    """Hash of each span values[first[i]:last[i]], the same wherever the span is (polynomial
    prefix hashes, mod 2**64). bits=32 keeps the high half after an odd multiply (dedup's shingles)."""
    power, inverse = _powers(base, len(values) + 1)
    with np.errstate(over="ignore"):
        prefix = np.zeros(len(values) + 1, dtype=np.uint64)
        np.cumsum(values.astype(np.uint64) * power[:len(values)], dtype=np.uint64, out=prefix[1:])
        spans = (prefix[last] - prefix[first]) * inverse[first]
        if bits == 32:
            return ((spans * _MIX) >> np.uint64(32)).astype(np.uint32)
    return spans


def token_bounds(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end offsets of tokens in a normalized text given as code points."""
    n = len(codes)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    space = codes == 32
    cjk = _CJK[codes]
    prev_breaks = np.concatenate([[True], space[:-1] | cjk[:-1]])
    next_breaks = np.concatenate([space[1:] | cjk[1:], [True]])
    starts = np.flatnonzero(~space & (cjk | prev_breaks))
    ends = np.flatnonzero(~space & (cjk | next_breaks)) + 1
    return starts, ends


def shingle_hashes(text: str, ngram: int) -> np.ndarray:
    """32-bit hashes of the token n-grams of `normalize(text)` (one hash for shorter texts)."""
    codes = normalized_codes(text)
    starts, ends = token_bounds(codes)
    if len(starts) == 0:
        return np.zeros(0, dtype=np.uint32)
    k = max(1, len(starts) - ngram + 1)
    return _span_hashes(codes, starts[:k], ends[np.minimum(np.arange(k) + ngram - 1, len(ends) - 1)])


def _span_hashes(codes: np.ndarray, first: np.ndarray, last: np.ndarray) -> np.ndarray:
    """32-bit hash of each substring codes[first[i]:last[i]] (shingles)."""
    return span_hashes(codes.astype(np.uint64) + np.uint64(1), first, last, _P, bits=32)


def split_units(text: str, unit: str) -> list[str]:
    """Cut a text into pieces that join back to it exactly: lines (with their newline) or sentences."""
    lines = text.splitlines(keepends=True)
    if unit == "paragraph":
        return lines
    return [piece for line in lines for piece in _SENTENCE_END.split(line) if piece]


def unit_key(unit: str) -> tuple[int, int]:
    """64-bit key of a unit's normalized form, and that form's length in characters (line dedup)."""
    return _key_of_normalized(normalize(unit))


def _key_of_normalized(norm: str) -> tuple[int, int]:
    return int.from_bytes(hashlib.blake2b(norm.encode("utf-8"), digest_size=8).digest(), "little"), len(norm)


def unit_keys(units: list[str]) -> list[tuple[int, int]]:
    """`unit_key` of each of a text's consecutive units, with the case and separator folding done in
    one pass over the whole text where that gives the same forms: units are NFKC-normalized one by
    one, and the text has no capital sigma (the one letter whose lower case depends on its
    neighbours) and no letter whose lower case is longer. Runs of separators then fold per unit: a
    run restarts at a unit's first character (a leading run goes), and a unit's trailing space goes."""
    units = [u if unicodedata.is_normalized("NFKC", u) else unicodedata.normalize("NFKC", u) for u in units]
    text = "".join(units)
    lowered = text.lower()
    if not text or "\u03a3" in text or len(lowered) != len(text):
        return [unit_key(u) for u in units]
    codes = np.frombuffer(lowered.encode("utf-32-le"), dtype=np.uint32)
    fold = _SEPARATOR[codes]
    starts = np.cumsum([0] + [len(u) for u in units[:-1]])
    previous_folded = np.concatenate([[True], fold[:-1]])
    previous_folded[starts[starts < len(codes)]] = True      # as if each unit began after a folded run
    kept = ~fold | ~previous_folded
    folded = np.where(fold, np.uint32(32), codes)[kept]
    out_bounds = np.concatenate([[0], np.cumsum(kept)])[np.append(starts, len(codes))].tolist()
    whole = folded.tobytes().decode("utf-32-le")
    keys = []
    for lo, hi in zip(out_bounds[:-1], out_bounds[1:]):
        if hi > lo and whole[hi - 1] == " ":
            hi -= 1
        keys.append(_key_of_normalized(whole[lo:hi]))
    return keys
