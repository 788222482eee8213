"""Benchmark decontamination: training documents that share an n-gram (13 by default) with an
item of a user-supplied evaluation set.

Tokens are the dedup stages' (data_pipeline.dedup.text): text width- and case-folded, punctuation
folded away, each CJK character one token and each run of other characters one token, so English
is compared by words and Chinese by characters, whatever the spacing. An n-gram is hashed to 64
bits: 10^11 training n-grams against a million evaluation ones expect 0.005 false hits in all.
Each text field of an item is taken on its own. A field of k tokens, min_ngram (8) <= k < n, is
hashed whole as one k-gram (most MMLU / C-Eval questions are shorter than 13 tokens), and documents
are hashed at those sizes too; a field shorter than min_ngram cannot be matched and is counted as
`short_fields`. A field named in `fields` that no item of a file has is an error; unset, `fields`
takes whichever of prompt, question, answer, choices a file has.
"""
from __future__ import annotations

import gzip
import json
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from stack_common.errors import UserError

from .config import DecontaminateConfig
from .dedup.text import normalized_codes, span_hashes, token_bounds

_Q = np.uint64(0x9E3779B97F4A7C15)   # n-grams: a second base, over the token hashes
DEFAULT_FIELDS = ("prompt", "question", "answer", "choices")   # with decontaminate.fields unset
_SEPARATOR = "\ue000"   # a private-use character: a token of its own between texts hashed together


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: nearby inputs give unrelated outputs."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _token_hashes(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A hash per token of a normalized text, and the tokens' start and end offsets."""
    starts, ends = token_bounds(codes)
    return _mix(span_hashes(codes.astype(np.uint64) + np.uint64(1), starts, ends)), starts, ends


def _ngrams(tokens: np.ndarray, sizes: list[int]) -> np.ndarray:
    """Hashes of the n-grams of every size in `sizes` (one prefix-hash pass for all)."""
    first = [np.arange(len(tokens) - k + 1) for k in sizes if len(tokens) >= k]
    if not first:
        return np.zeros(0, np.uint64)
    last = [f + k for f, k in zip(first, (k for k in sizes if len(tokens) >= k))]
    return _mix(span_hashes(tokens, np.concatenate(first), np.concatenate(last), _Q))


def ngram_hashes(text: str, n: int | list[int]) -> np.ndarray:
    """64-bit hashes of the token n-grams of a text, of one size or several (empty when it has
    fewer tokens)."""
    tokens = _token_hashes(normalized_codes(text.replace(_SEPARATOR, " ")))[0]   # U+E000: icon fonts in web text
    return _ngrams(tokens, [n] if isinstance(n, int) else n)


def batch_ngram_hashes(texts: list[str], n: int) -> list[np.ndarray]:
    """`ngram_hashes` of many short texts at numpy speed: they are hashed as one text with a
    separator token between them, and n-grams that span a separator are dropped. The texts must
    not hold the separator (U+E000) themselves."""
    codes = normalized_codes(f" {_SEPARATOR} ".join(texts))
    tokens, starts, ends = _token_hashes(codes)
    if len(tokens) < n:
        return [np.zeros(0, dtype=np.uint64) for _ in texts]
    first = np.arange(len(tokens) - n + 1)
    hashes = _ngrams(tokens, [n])
    is_sep = (ends - starts == 1) & (codes[starts] == ord(_SEPARATOR))
    seps_before = np.concatenate([[0], np.cumsum(is_sep)])          # separators among tokens [0, i)
    whole = seps_before[first + n] == seps_before[first]              # no separator inside the n-gram
    owner = seps_before[first][whole]                                 # which text the n-gram is in
    hashes = hashes[whole]
    cuts = np.searchsorted(owner, np.arange(len(texts) + 1))
    return [hashes[cuts[i]:cuts[i + 1]] for i in range(len(texts))]


@dataclass(frozen=True)
class EvalSet:
    name: str
    hashes: np.ndarray        # sorted, unique
    items: int
    short_fields: int         # fields of fewer than min_ngram tokens: never matched
    fallback_sizes: tuple[int, ...]   # n-gram sizes below `ngram` that short fields were hashed at
    missing_fields: dict      # field -> items without it, in files that have it elsewhere

    def hits(self, doc_hashes: np.ndarray) -> int:
        if len(self.hashes) == 0 or len(doc_hashes) == 0:
            return 0
        at = np.minimum(np.searchsorted(self.hashes, doc_hashes), len(self.hashes) - 1)
        return int(np.count_nonzero(self.hashes[at] == doc_hashes))


def _records(path: Path, fields: list[str]):
    """(location, record) of a JSONL (plain or .gz) or Parquet evaluation file."""
    name = path.name.lower()
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        columns = [f for f in fields if f in pq.read_schema(path).names]
        if not columns:
            raise UserError(f"none of the fields {fields} is a column", file=path, field="decontaminate.fields")
        for i, row in enumerate(pq.read_table(path, columns=columns).to_pylist()):
            yield f"row {i}", row
        return
    if not name.endswith((".jsonl", ".json", ".ndjson", ".jsonl.gz", ".json.gz", ".ndjson.gz")):
        raise UserError("unsupported evaluation file", file=path, expected=".jsonl, .jsonl.gz or .parquet")
    opener = gzip.open if name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as err:
                raise UserError(f"not JSON ({err})", file=path, record=f"line {number}") from None
            if not isinstance(record, dict):
                raise UserError("not a JSON object", file=path, record=f"line {number}")
            yield f"line {number}", record


def _field_texts(value, path: Path, location: str, field: str) -> list[str]:
    """A field's texts: a string, the strings of a list (e.g. MMLU choices), or a number."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [str(value)]
    if isinstance(value, list) and all(isinstance(v, (str, int, float)) for v in value):
        return [str(v) for v in value]
    raise UserError(f"a {type(value).__name__} is not text", file=path, record=location, field=field,
                    expected="a string, a number or a list of strings")


def token_count(text: str) -> int:
    return len(token_bounds(normalized_codes(text))[0])


def _file_texts(name: str, path: Path, fields: list[str] | None, missing: Counter) -> tuple[list[str], int]:
    """The texts of a file's items and their number. Named fields must each occur in the file;
    with no fields named, those of DEFAULT_FIELDS that occur are taken. An item without a field
    the file has elsewhere counts in `missing`."""
    wanted = list(fields or DEFAULT_FIELDS)
    texts, items, present = [], 0, Counter()
    for location, record in _records(path, wanted):
        items += 1
        for field in wanted:
            if record.get(field) is not None:
                present[field] += 1
                texts += [t.replace(_SEPARATOR, " ") for t in _field_texts(record[field], path, location, field)]
    absent = [f for f in wanted if not present[f]]
    if items and (absent if fields else len(absent) == len(wanted)):
        raise UserError(f"no item has the field(s) {absent}", file=path, field=f"decontaminate.eval_sets.{name}",
                        expected=f"items with the fields {wanted} (set decontaminate.fields to the file's text fields)")
    missing.update({f: items - present[f] for f in wanted if 0 < present[f] < items})
    return texts, items


def load_eval_set(name: str, files: list[str], fields: list[str] | None, n: int, min_n: int | None = None) -> EvalSet:
    """Every n-gram of the items' fields; a field of k tokens, min_n <= k < n, as its one k-gram."""
    min_n = n if min_n is None else min(min_n, n)
    chunks, items, short, sizes, missing = [], 0, 0, set(), Counter()
    for file in files:
        path = Path(file)
        if not path.is_file():
            raise UserError("evaluation file does not exist", file=file, field=f"decontaminate.eval_sets.{name}")
        texts, count = _file_texts(name, path, fields, missing)
        items += count
        for begin in range(0, len(texts), 1000):
            batch = texts[begin:begin + 1000]
            for text, hashes in zip(batch, batch_ngram_hashes(batch, n)):
                if len(hashes) == 0 and min_n <= (k := token_count(text)) < n:
                    hashes = batch_ngram_hashes([text], k)[0]
                    sizes.add(k)
                short += len(hashes) == 0
                chunks.append(hashes)
    hashes = np.unique(np.concatenate(chunks)) if chunks else np.zeros(0, dtype=np.uint64)
    if len(hashes) == 0:
        raise UserError(f"no item has a field of {min_n} or more tokens", field=f"decontaminate.eval_sets.{name}",
                        expected=f"items with the fields {fields or list(DEFAULT_FIELDS)} (decontaminate.fields)")
    return EvalSet(name, hashes, items, short, tuple(sorted(sizes)), dict(sorted(missing.items())))


@lru_cache(maxsize=2)
def _load_cached(key: tuple) -> tuple[EvalSet, ...]:
    sets, fields, n, min_n = key
    return tuple(load_eval_set(name, list(files), list(fields) or None, n, min_n) for name, files, _ in sets)


def load_eval_sets(cfg: DecontaminateConfig) -> tuple[EvalSet, ...]:
    """Every evaluation set, loaded once per process (the files' sizes and times are in the key)."""
    sets = tuple((name, tuple(files), tuple(_stamp(f) for f in files)) for name, files in sorted(cfg.eval_sets.items()))
    return _load_cached((sets, tuple(cfg.fields or ()), cfg.ngram, cfg.min_ngram))


def _stamp(file: str) -> tuple:
    try:
        st = Path(file).stat()
        return st.st_size, st.st_mtime_ns
    except OSError:
        return ()


class Decontaminator:
    """`hits(text) -> {benchmark: matching n-grams}` (benchmarks with none left out)."""

    def __init__(self, cfg: DecontaminateConfig):
        self.sets = load_eval_sets(cfg)
        self.sizes = sorted({cfg.ngram} | {k for s in self.sets for k in s.fallback_sizes})
        self.all = np.unique(np.concatenate([s.hashes for s in self.sets])) if self.sets else np.zeros(0, np.uint64)

    def hits(self, text: str) -> dict[str, int]:
        hashes = ngram_hashes(text, self.sizes)
        if len(hashes) == 0 or len(self.all) == 0:
            return {}
        at = np.minimum(np.searchsorted(self.all, hashes), len(self.all) - 1)
        candidates = hashes[self.all[at] == hashes]
        if len(candidates) == 0:
            return {}
        return {s.name: k for s in self.sets if (k := s.hits(candidates))}

    def describe(self) -> list[dict]:
        return [{"benchmark": s.name, "items": s.items, "ngrams": len(s.hashes), "short_fields": s.short_fields,
                 "fallback_sizes": list(s.fallback_sizes), "missing_fields": s.missing_fields} for s in self.sets]
