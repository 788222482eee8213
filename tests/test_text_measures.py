"""The n-gram repetition measures (`filters.common.NgramIndex`) against their plain definitions:
tuples / substrings counted in a Counter, and the greedy left-to-right scan for duplicated n-grams."""
import random
from collections import Counter

import pytest

from data_pipeline.filters.common import NgramIndex, duplicated_ngram_char_fraction, top_ngram_char_fraction


def plain_ngrams(units, n):
    if isinstance(units, str):
        return [units[i:i + n] for i in range(len(units) - n + 1)]
    return list(zip(*(units[i:] for i in range(n))))


def plain_top(units, n, total):
    grams = plain_ngrams(units, n)
    if not grams:
        return 0.0
    gram, count = Counter(grams).most_common(1)[0]      # the first-seen of equally frequent grams
    if count < 2:
        return 0.0
    chars = len(gram) if isinstance(gram, str) else sum(map(len, gram))
    return min(1.0, count * chars / (total or 1))


def plain_duplicated(units, n, total):
    grams = plain_ngrams(units, n)
    seen, covered, i = set(), [False] * len(units), 0
    while i < len(grams):
        if grams[i] in seen:
            covered[i:i + n] = [True] * n
            i += n
        else:
            seen.add(grams[i])
            i += 1
    if isinstance(units, str):
        return sum(covered) / (total or 1)
    return sum(len(u) for u, hit in zip(units, covered) if hit) / (total or 1)


def random_units(rng, chinese):
    if chinese:
        alphabet = "的一是了我不人在他有这个上们来到时大地为子中你说生国年着就那和要她出也得里后自以会家可下而过天去能对小多然于心学么之都好看起发当没成只如事把还用第样道想作种开美总从无情己面最女但现前些所同日手又行意动方期它头经长儿回位分爱老因很给名法间斯知世什两次使身者被高已亲其进此话常与活正感😀𠀋"
        size = rng.choice([3, 12, 60])
        return "".join(rng.choice(alphabet[:size] + alphabet[-2:]) for _ in range(rng.randrange(0, 400)))
    vocab = [("w" * rng.randrange(1, 9)) + str(k) for k in range(rng.choice([2, 5, 40, 300]))]
    return [rng.choice(vocab) for _ in range(rng.randrange(0, 400))]


@pytest.mark.parametrize("chinese", [False, True])
def test_ngram_measures_equal_their_plain_definitions(chinese):
    rng = random.Random(7 if chinese else 8)
    nonzero_top = nonzero_dup = 0
    for _ in range(300):
        units = random_units(rng, chinese)
        total = len(units) if chinese else sum(map(len, units))
        index = NgramIndex(units)
        for n in range(1, 11):
            top, dup = top_ngram_char_fraction(index, n, total), duplicated_ngram_char_fraction(index, n, total)
            assert top == plain_top(units, n, total), (units, n)
            assert dup == plain_duplicated(units, n, total), (units, n)
            nonzero_top += top > 0
            nonzero_dup += dup > 0
    assert nonzero_top > 500 and nonzero_dup > 500      # the inputs repeat: the comparison is not all zeros


def test_character_unigrams_are_numbered_densely():
    # 98 characters whose largest code point is 97: raw code points would look all distinct
    for text in ("a" * 98, "1" * 50, "ab" * 49):
        index = NgramIndex(text)
        assert duplicated_ngram_char_fraction(index, 1, len(text)) == plain_duplicated(text, 1, len(text)) > 0.9
        assert top_ngram_char_fraction(index, 1, len(text)) == plain_top(text, 1, len(text))


def test_equally_frequent_ngrams_count_the_first_seen_one():
    # "bb cc" and "a a" both occur twice; the first seen ("a a") covers 2 chars a time, not 4.
    units = ["a", "a", "a", "bb", "cc", "x", "bb", "cc"]
    total = sum(map(len, units))
    assert top_ngram_char_fraction(NgramIndex(units), 2, total) == 2 * 2 / total
    assert top_ngram_char_fraction(NgramIndex(units[2:]), 2, total) == 2 * 4 / total


def test_script_counts_equal_the_patterns_own_counts():
    """script_stats and count_letters count characters through a learnt table of code point classes; the counts must
    be those of the class patterns (findall) on any text: astral characters, lone surrogates,
    controls that CLD2 refuses."""
    import re

    from data_pipeline.char_classes import (CLD2_REFUSED, HAN_RE, HANGUL_RE, KANA_RE, LATIN_RE, LETTER_RE, REFUSED,
                                            code_point_classes, count_letters)
    from data_pipeline.lang import script_stats

    rng = random.Random(3)
    ranges = [(0, 0x80), (0x80, 0x3000), (0x3000, 0x10000), (0x10000, 0x110000)]
    for _ in range(2000):
        text = "".join(chr(rng.randrange(*rng.choice(ranges))) for _ in range(rng.randrange(0, 120)))
        letters, han, latin = (len(p.findall(text)) for p in (LETTER_RE, HAN_RE, LATIN_RE))
        stats = script_stats(text)
        assert stats["letters"] == letters == count_letters(text)
        assert stats["han_share"] == han / ((han + latin / 4) or 1)
        assert stats["latin_ratio"] == latin / (letters or 1)
        assert stats["kana_ratio"] == len(KANA_RE.findall(text)) / (letters or 1)
        assert stats["hangul_ratio"] == len(HANGUL_RE.findall(text)) / (letters or 1)
        assert bool((code_point_classes(text) & REFUSED).any()) == bool(CLD2_REFUSED.search(text))
    mixed = "中文 text カナ 한글 \x07"
    assert script_stats(mixed)["letters"] == len(re.findall(r"[^\W\d_]", mixed)) == 10


def test_code_line_prefilters_leave_the_verdict_of_the_patterns():
    """looks_like_code runs a pattern only where the line's first or last character allows a match;
    on any line the verdict must equal the plain chain of patterns."""
    from data_pipeline import content_type as ct

    def plain(line):
        if ct.CODE_COMMENT_RE.match(line):
            return True
        if ct.HAN_RUN_RE.search(line):
            return False
        return bool(ct.CODE_KEYWORD_RE.match(line) or ct.CODE_END_RE.search(line) or ct.CODE_SOFT_END_RE.match(line)
                    or ct.CODE_ASSIGN_RE.match(line) or ct.CODE_CALL_RE.search(line))

    pieces = ["def", "int", "return", "#include", "#", "@x", "//", "/*", "*", "--", ";;", "x", "foo", "f(a)", "(", ")",
              "[", "]", "{", "}", ";", ":", ",", "=", "==", "+=", "\\", "'", '"', "_", " ", "\t", "\u3000", "\u00a0",
              "\x1c", "中文字", "中", "。", "Click", "é"]
    rng = random.Random(5)
    verdicts = []
    for _ in range(20000):
        line = "".join(rng.choice(pieces) for _ in range(rng.randrange(1, 9)))
        assert ct.looks_like_code(line) == plain(line), repr(line)
        verdicts.append(plain(line))
    assert 0.2 < sum(verdicts) / len(verdicts) < 0.8       # both verdicts are well represented


def test_unit_keys_of_a_whole_text_equal_each_units_own_key():
    """Line dedup folds a document's units in one pass (`unit_keys`); every key and length must be
    the one `unit_key` gives the unit alone: units not NFKC (full-width letters, a decomposed accent),
    and the texts that take the per-unit path (a capital sigma, a longer lower case: İ)."""
    from data_pipeline.dedup.text import split_units, unit_key, unit_keys

    pieces = ["Hello", "world", " ", "  ", "\t", "\n", "\n\n", ".", "!", "...", "-", "中文", "。", "！", "；", "3.14",
              "ΟΔΟΣ", "ο", "İ", "Ｆｕｌｌ", "e\u0301", "\u0301", "é", "😀", "\u3000", "\x07", "«", "»", "_", "A"]
    rng = random.Random(11)
    fast = 0
    for _ in range(3000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randrange(0, 30)))
        for unit in ("paragraph", "sentence"):
            units = split_units(text, unit)
            assert unit_keys(units) == [unit_key(u) for u in units], (unit, text)
        fast += "Σ" not in text and "İ" not in text
    assert fast > 300                      # the one-pass path was taken often
    # Units cut anywhere (not by split_units): a separator run opening a unit after a letter, a
    # capital sigma whose lower case depends on the next unit.
    for units in (["", "a b ", "", " .x"], ["ab", " cd", "..e"], ["ΟΔΟΣ", "ο"], ["中", "，文"]):
        assert unit_keys(units) == [unit_key(u) for u in units], units
    assert unit_keys([]) == []
