"""Character classes counted per document (letters, Han, Latin, kana, Hangul, what CLD2 refuses).

Each class is defined by a one-character pattern; a table holds each code point's classes as bit
flags, learnt from the patterns the first time a code point is seen, so the counts equal the
patterns' own (findall) at the cost of one numpy lookup per document instead of a regex scan per
class.
"""
from __future__ import annotations

import re

import numpy as np

HAN_RE = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
KANA_RE = re.compile(r"[\u3040-\u30ff\u31f0-\u31ff]")
HANGUL_RE = re.compile(r"[\u1100-\u11ff\u3130-\u318f\uac00-\ud7af]")
LATIN_RE = re.compile(r"[A-Za-z\u00c0-\u024f]")
LETTER_RE = re.compile(r"[^\W\d_]")
# What CLD2 refuses as "invalid UTF-8": C0/C1 controls (but \t \n \f \r), surrogates, noncharacters.
CLD2_REFUSED = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufdd0-\ufdef"
                          + "".join(f"{chr(plane * 0x10000 + 0xfffe)}{chr(plane * 0x10000 + 0xffff)}"
                                    for plane in range(17)) + "]")


CLASS_PATTERNS = (LETTER_RE, HAN_RE, LATIN_RE, KANA_RE, HANGUL_RE, CLD2_REFUSED)
LETTER, HAN, LATIN, KANA, HANGUL, REFUSED = (1 << k for k in range(len(CLASS_PATTERNS)))
_UNLEARNT = 0x80
_class_bits = np.full(0x110000, _UNLEARNT, dtype=np.uint8)
FLAGS = (LETTER, HAN, LATIN, KANA, HANGUL, REFUSED)
# _IN_CLASS[k, v]: whether bit value v includes class k
_IN_CLASS = (np.arange(1 << len(FLAGS))[None, :] >> np.arange(len(FLAGS))[:, None]) & 1


def code_point_classes(text: str) -> np.ndarray:
    """The class bits of every character of `text`."""
    codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    bits = _class_bits[codes]
    unlearnt = bits == _UNLEARNT
    if unlearnt.any():
        for code in np.unique(codes[unlearnt]).tolist():
            char = chr(code)
            _class_bits[code] = sum(1 << k for k, pattern in enumerate(CLASS_PATTERNS) if pattern.match(char))
        bits = _class_bits[codes]
    return bits


def class_counts(text: str) -> dict[int, int]:
    """Characters of `text` in each class, keyed by the class's flag (LETTER, HAN, ...)."""
    per_value = np.bincount(code_point_classes(text), minlength=_IN_CLASS.shape[1])
    return dict(zip(FLAGS, (_IN_CLASS @ per_value).tolist()))


def count_letters(text: str) -> int:
    """len(LETTER_RE.findall(text))"""
    return int(np.count_nonzero(code_point_classes(text) & LETTER))
