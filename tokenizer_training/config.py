"""Typed configuration of `python -m tokenizer_training` (Hydra tree: configs/tokenizer_training.yaml
with the config group `tokenizer`). Hydra composes the YAML; these dataclasses validate it."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from stack_common.config import Checks

GROUP_BY = ("lang", "source")


@dataclass
class ControlBlock:
    """A run of control symbols: `format` with `{}` numbered first, first+1, ...; without `{}`
    (and count 1) a single named symbol."""
    format: str = "<reserved_{}>"
    first: int = 0
    count: int = 1

    def names(self) -> list[str]:
        if "{}" not in self.format:
            return [self.format] * min(self.count, 1)
        return [self.format.format(self.first + i) for i in range(self.count)]


@dataclass
class TokenizerConfig:
    """SentencePiece trainer settings (Baichuan 2 defaults) and the special-token layout."""
    vocab_size: int = 125_696
    model_type: str = "bpe"
    character_coverage: float = 0.9999
    split_digits: bool = True
    byte_fallback: bool = True
    normalization_rule_name: str = "identity"
    add_dummy_prefix: bool = False
    remove_extra_whitespaces: bool = False
    allow_whitespace_only_pieces: bool = True
    max_sentencepiece_length: int = 32
    split_by_unicode_script: bool = True
    split_by_whitespace: bool = True
    max_sentence_length: int = 16384      # bytes; longer lines are cut into pieces of this size
    num_threads: int = 0                  # 0 = every core
    unk_piece: str = "<unk>"              # id 0
    bos_piece: str = "<s>"                # id 1
    eos_piece: str = "</s>"               # id 2, the end-of-document token
    pad_id: int = 0                       # no pad piece: padding uses <unk> (id 0) as Baichuan 2 does
    # ids 3, 4, ... in order: <reserved_106> / <reserved_107> land on 195 / 196 as in Baichuan 2
    control_symbols: list[ControlBlock] = field(default_factory=lambda: [
        ControlBlock("<unused_{}>", 0, 88), ControlBlock("<reserved_{}>", 2, 200)])
    min_bytes_per_piece: int = 80         # small-corpus guard: text bytes needed per vocabulary piece
    extra: dict[str, Any] = field(default_factory=dict)  # any other SentencePieceTrainer option


@dataclass
class SampleConfig:
    mix: Optional[dict[str, float]] = None  # shares of training-text bytes per language; None = as found
    max_sentences: int = 20_000_000         # cap on training lines (SentencePiece "sentences")
    max_bytes: int = 2_000_000_000          # cap on training text bytes (memory is about 9x this)
    holdout_fraction: float = 0.02          # documents kept out of training, for `evaluate`
    max_holdout_docs_per_lang: int = 2000
    seed: int = 1234


@dataclass
class EvaluateConfig:
    compare: list[str] = field(default_factory=list)  # other tokenizers: *.model or tokenizer.json
    max_docs_per_lang: int = 2000


@dataclass
class EncodeConfig:
    group_by: str = "lang"      # one output per "lang" or per "source"
    workers: int = 2
    chunk_mb: float = 8.0       # text per work unit (the unit of resumption)
    append_eod: bool = True


@dataclass
class AppConfig:
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    input: list[str] = field(default_factory=list)
    out: Optional[str] = None
    model_file: Optional[str] = None  # not `model`: that name is a config group of pretrain
    overwrite: bool = False
    sample: SampleConfig = field(default_factory=SampleConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    encode: EncodeConfig = field(default_factory=EncodeConfig)


def control_symbol_names(tok: TokenizerConfig) -> list[str]:
    return [name for block in tok.control_symbols for name in block.names()]


def check_tokenizer(tok: TokenizerConfig, checks: Checks) -> None:
    checks.require(tok.model_type in ("bpe", "unigram"), f"tokenizer.model_type: {tok.model_type!r} is not bpe or unigram")
    checks.require(tok.vocab_size > 0, "tokenizer.vocab_size must be positive")
    checks.require(0 < tok.character_coverage <= 1, "tokenizer.character_coverage must be in (0, 1]")
    checks.require(1 <= tok.max_sentencepiece_length <= 64, "tokenizer.max_sentencepiece_length must be in 1..64")
    checks.require(tok.max_sentence_length >= 64, "tokenizer.max_sentence_length must be at least 64 bytes")
    names = control_symbol_names(tok)
    checks.require(len(set(names)) == len(names), "tokenizer.control_symbols: names repeat")
    specials = {tok.unk_piece, tok.bos_piece, tok.eos_piece}
    checks.require(not specials & set(names), "tokenizer.control_symbols: must not repeat unk/bos/eos pieces")
    checks.require(0 <= tok.pad_id < 3 + len(names), "tokenizer.pad_id must be the id of a special or control symbol")
    meta = 3 + len(names) + (256 if tok.byte_fallback else 0)
    checks.require(tok.vocab_size > meta, f"tokenizer.vocab_size={tok.vocab_size} leaves no room after {meta} "
                                          "special, control and byte pieces")


def check_sample(sample: SampleConfig, checks: Checks) -> None:
    if sample.mix is not None:
        checks.require(all(v >= 0 for v in sample.mix.values()) and sum(sample.mix.values()) > 0,
                       "sample.mix: shares must be >= 0 and not all zero")
    checks.require(0 <= sample.holdout_fraction < 0.5, "sample.holdout_fraction must be in [0, 0.5)")
    checks.require(sample.max_sentences > 0 and sample.max_bytes > 0, "sample.max_sentences and max_bytes must be positive")


def check_encode(enc: EncodeConfig, checks: Checks) -> None:
    checks.require(enc.group_by in GROUP_BY, f"encode.group_by: {enc.group_by!r} is not one of {GROUP_BY}")
    checks.require(enc.workers >= 1, "encode.workers must be >= 1")
    checks.require(enc.chunk_mb > 0, "encode.chunk_mb must be positive")
