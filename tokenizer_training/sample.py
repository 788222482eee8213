"""Sample the tokenizer's training text from Arrow shards, streaming, reproducibly.

Two passes over memory-mapped shards. The survey reads only ids, languages and text lengths;
it fixes a keep rate per language so the sample follows `sample.mix` (shares of text bytes)
within the byte and sentence caps. The second pass writes the kept documents one line per
SentencePiece "sentence" and sets aside a held-out slice for `evaluate`. Which document goes
where is a hash of (seed, id), so the sample does not depend on file order or worker count.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import pyarrow as pa
import pyarrow.compute as pc

from stack_common.logging import get_logger
from stack_common.progress import progress
from stack_common.shards import ShardWriter

from .config import SampleConfig
from .sources import iter_docs, unit_hash

log = get_logger("tokenizer_training.sample")
COLUMNS = ["id", "text", "lang", "source"]
HELDOUT_SCHEMA = pa.schema([("id", pa.string()), ("text", pa.string()), ("lang", pa.string()), ("source", pa.string())])


@dataclass
class LangCount:
    docs: int = 0
    bytes: int = 0
    lines: int = 0


@dataclass
class SampleStats:
    available: dict[str, LangCount] = field(default_factory=dict)
    keep_rate: dict[str, float] = field(default_factory=dict)
    kept: dict[str, LangCount] = field(default_factory=dict)
    heldout: dict[str, LangCount] = field(default_factory=dict)
    null_text_docs: int = 0
    stopped_at_cap: bool = False

    @property
    def kept_bytes(self) -> int:
        return sum(c.bytes for c in self.kept.values())

    @property
    def kept_lines(self) -> int:
        return sum(c.lines for c in self.kept.values())

    def as_dict(self) -> dict:
        return {**asdict(self), "kept_bytes": self.kept_bytes, "kept_lines": self.kept_lines}


def is_heldout(cfg: SampleConfig, doc_id: str) -> bool:
    return unit_hash(cfg.seed, "heldout", doc_id) < cfg.holdout_fraction


def survey(files: Sequence[Path], cfg: SampleConfig) -> SampleStats:
    """Pass 1: text bytes and lines per language, held-out documents excluded."""
    stats = SampleStats()
    for _, batch in progress(iter_docs(files, ["id", "text", "lang"]), desc="survey", unit="batch"):
        sizes = pc.binary_length(batch.column("text")).to_pylist()
        newlines = pc.count_substring(batch.column("text"), "\n").to_pylist()
        for doc_id, lang, size, nl in zip(batch.column("id").to_pylist(), batch.column("lang").to_pylist(), sizes, newlines):
            if size is None:
                stats.null_text_docs += 1
                continue
            if is_heldout(cfg, str(doc_id)):
                continue
            count = stats.available.setdefault(str(lang), LangCount())
            count.docs += 1
            count.bytes += size
            count.lines += nl + 1
    return stats


def plan_keep_rates(stats: SampleStats, cfg: SampleConfig) -> dict[str, float]:
    """Keep probability per language: the largest sample with byte shares `cfg.mix` that fits the caps."""
    avail = {lang: c for lang, c in stats.available.items() if c.bytes > 0}
    shares = dict(cfg.mix) if cfg.mix is not None else {lang: float(c.bytes) for lang, c in avail.items()}
    missing = [lang for lang, s in shares.items() if s > 0 and lang not in avail]
    if missing:
        log.warning("sample.mix names languages with no text in the input: %s (left out, other shares rescaled)", missing)
    shares = {lang: s for lang, s in shares.items() if s > 0 and lang in avail}
    if not shares:
        return {}
    total_share = sum(shares.values())
    shares = {lang: s / total_share for lang, s in shares.items()}
    total = min(avail[lang].bytes / share for lang, share in shares.items())  # the scarcest language limits
    total = min(total, cfg.max_bytes)
    lines_per_byte = sum(shares[lang] * avail[lang].lines / avail[lang].bytes for lang in shares)
    total = min(total, cfg.max_sentences / max(lines_per_byte, 1e-12))
    return {lang: min(1.0, total * share / avail[lang].bytes) for lang, share in shares.items()}


def planned_bytes(stats: SampleStats, rates: dict[str, float]) -> int:
    return int(sum(stats.available[lang].bytes * rate for lang, rate in rates.items()))


def split_line(line: str, max_bytes: int) -> list[str]:
    """Cut a line into pieces of at most `max_bytes` UTF-8 bytes at character boundaries
    (SentencePiece skips longer lines entirely)."""
    data = line.encode("utf-8", "surrogatepass")
    if len(data) <= max_bytes:
        return [line]
    pieces, start = [], 0
    while start < len(data):
        end = min(start + max_bytes, len(data))
        while end < len(data) and (data[end] & 0xC0) == 0x80:  # never cut inside a character
            end -= 1
        pieces.append(data[start:end].decode("utf-8", "surrogatepass"))
        start = end
    return pieces


def training_lines(text: str, max_bytes: int) -> list[str]:
    """One SentencePiece sentence per non-blank line; newlines themselves are left to byte fallback."""
    lines = []
    for line in text.split("\n"):
        if line.strip():
            lines.extend(split_line(line, max_bytes))
    return lines


def write_sample(files: Sequence[Path], cfg: SampleConfig, stats: SampleStats, text_path: Path,
                 heldout_dir: Path, max_line_bytes: int) -> SampleStats:
    """Pass 2: write kept documents to `text_path`, held-out ones to the shard dir `heldout_dir`."""
    rates = stats.keep_rate
    with open(text_path, "w", encoding="utf-8", errors="surrogatepass") as out, \
            ShardWriter(heldout_dir, HELDOUT_SCHEMA, prefix="heldout") as heldout:
        for _, batch in progress(iter_docs(files, COLUMNS), desc="sample", unit="batch"):
            rows = []
            for doc in batch.to_pylist():
                text, doc_id, lang = doc["text"], str(doc["id"]), str(doc["lang"])
                if text is None:
                    continue
                if is_heldout(cfg, doc_id):
                    count = stats.heldout.setdefault(lang, LangCount())
                    if count.docs < cfg.max_holdout_docs_per_lang:
                        rows.append({"id": doc_id, "text": text, "lang": lang, "source": doc["source"]})
                        count.docs += 1
                        count.bytes += len(text.encode("utf-8", "surrogatepass"))
                    continue
                if unit_hash(cfg.seed, "train", doc_id) >= rates.get(lang, 0.0):
                    continue
                lines = training_lines(text, max_line_bytes)
                size = sum(len(s.encode("utf-8", "surrogatepass")) for s in lines)
                if stats.kept_lines + len(lines) > cfg.max_sentences or stats.kept_bytes + size > cfg.max_bytes:
                    stats.stopped_at_cap = True
                    continue
                out.write("\n".join(lines) + "\n" if lines else "")
                count = stats.kept.setdefault(lang, LangCount())
                count.docs += 1
                count.lines += len(lines)
                count.bytes += size
            if rows:
                heldout.write(rows)
    if stats.stopped_at_cap:
        log.warning("sample reached a cap (sample.max_sentences or sample.max_bytes); later documents were skipped")
    return stats
