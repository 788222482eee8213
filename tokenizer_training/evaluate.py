"""`evaluate`: compression and correctness figures per language, for our tokenizer and others.

Figures (per language and over all text), lower compression rate is better:
    tokens_per_char, bytes_per_token (UTF-8 bytes of text per token)
    compression_rate   size of the token stream at log2(vocab) bits per token over the UTF-8 size
                       of the text (the measure behind the Baichuan 2 report's table:
                       Baichuan 2 0.498, LLaMA 2 1.037 on its mixed zh/en set)
    byte_fallback_rate share of tokens that are <0xNN> byte pieces, newlines excepted
    newline_byte_rate  share of tokens that are <0x0A>: SentencePiece trains on lines, so "\n"
                       is always a byte piece (as in LLaMA and Baichuan 2)
    unk_rate           share of unknown tokens (0 with byte fallback)
    roundtrip_exact    share of documents for which decode(encode(text)) == text
    multi_digit_tokens tokens holding more than one digit (0 when digits are split)
Writes OUT/eval_report.json and OUT/eval_report.md.
"""
from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from stack_common.atomic import atomic_dir, atomic_write_json, atomic_write_text
from stack_common.errors import UserError
from stack_common.logging import get_logger
from stack_common.progress import progress

from .config import AppConfig
from .export_hf import load_sentencepiece
from .sources import iter_docs, resolve_inputs, shard_files

log = get_logger("tokenizer_training.evaluate")
BYTE_PIECE = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")
DIGITS = re.compile(r"\d")
METRICS = ("tokens_per_char", "bytes_per_token", "compression_rate", "byte_fallback_rate", "newline_byte_rate", "unk_rate",
           "roundtrip_exact", "multi_digit_tokens")


class SentencePieceModel:
    def __init__(self, path: Path):
        self.name, self.sp = str(path), load_sentencepiece(path)
        self.vocab_size = self.sp.get_piece_size()
        self.byte_ids = {i for i in range(self.vocab_size) if self.sp.is_byte(i)}
        self.unk_id = self.sp.unk_id()
        self.pieces = [self.sp.id_to_piece(i) for i in range(self.vocab_size)]
        self.special_ids = {i for i in range(self.vocab_size) if self.sp.is_control(i) or self.sp.is_unknown(i)}

    def encode(self, texts: list[str]) -> list[list[int]]:
        return self.sp.encode(texts)

    def decode(self, ids: list[int]) -> str:
        return self.sp.decode(ids)


class HFTokenizerModel:
    """A Hugging Face `tokenizer.json` (or a directory holding one), without special tokens added."""

    def __init__(self, path: Path):
        from tokenizers import Tokenizer

        file = path / "tokenizer.json" if path.is_dir() else path
        try:
            self.tok = Tokenizer.from_file(str(file))
        except Exception as err:
            raise UserError(f"cannot load tokenizer.json ({str(err).splitlines()[0]})", file=file) from None
        # Control-symbol names in the text ("</s>", "<reserved_106>") are plain text, as for SentencePiece
        # and the exported tokenizer_config.json (split_special_tokens); tokenizer.json cannot store this.
        self.tok.encode_special_tokens = True
        self.name, self.vocab_size = str(path), self.tok.get_vocab_size(with_added_tokens=True)
        vocab = self.tok.get_vocab(with_added_tokens=True)
        self.pieces = [""] * (max(vocab.values()) + 1)
        for piece, i in vocab.items():
            self.pieces[i] = piece
        self.byte_ids = {i for piece, i in vocab.items() if BYTE_PIECE.match(piece)}
        self.special_ids = set(self.tok.get_added_tokens_decoder())
        unk = getattr(self.tok.model, "unk_token", None)
        self.unk_id = vocab.get(unk, -1) if unk else -1

    def encode(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=False)


def load_model(path: str | Path):
    path = Path(path)
    if not path.exists():
        raise UserError("tokenizer not found", file=path, expected="a SentencePiece *.model or a tokenizer.json")
    if path.suffix == ".json" or path.is_dir():
        return HFTokenizerModel(path)
    return SentencePieceModel(path)


@dataclass
class Tally:
    docs: int = 0
    chars: int = 0
    bytes: int = 0
    tokens: int = 0
    byte_tokens: int = 0
    newline_byte_tokens: int = 0
    unk_tokens: int = 0
    roundtrip_ok: int = 0
    multi_digit_tokens: int = 0
    roundtrip_failures: list = field(default_factory=list)

    def add(self, other: "Tally") -> None:
        for name in ("docs", "chars", "bytes", "tokens", "byte_tokens", "newline_byte_tokens", "unk_tokens",
                     "roundtrip_ok", "multi_digit_tokens"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.roundtrip_failures = (self.roundtrip_failures + other.roundtrip_failures)[:5]

    def figures(self, vocab_size: int) -> dict:
        tokens = max(self.tokens, 1)
        return {
            "docs": self.docs, "chars": self.chars, "bytes": self.bytes, "tokens": self.tokens,
            "tokens_per_char": self.tokens / max(self.chars, 1), "bytes_per_token": self.bytes / tokens,
            "compression_rate": self.tokens * math.log2(vocab_size) / (8 * max(self.bytes, 1)),
            "byte_fallback_rate": self.byte_tokens / tokens, "newline_byte_rate": self.newline_byte_tokens / tokens,
            "unk_rate": self.unk_tokens / tokens,
            "roundtrip_exact": self.roundtrip_ok / max(self.docs, 1), "multi_digit_tokens": self.multi_digit_tokens,
            "roundtrip_failures": self.roundtrip_failures,
        }


def measure(model, docs: list[tuple[str, str]]) -> Tally:
    """Tally one tokenizer over (id, text) documents."""
    tally = Tally()
    newline = next((i for i in model.byte_ids if model.pieces[i].upper() == "<0X0A>"), -1)
    multi_digit = {i for i, p in enumerate(model.pieces)
                   if len(DIGITS.findall(p)) > 1 and i not in model.byte_ids and i not in model.special_ids}
    for (doc_id, text), ids in zip(docs, model.encode([t for _, t in docs])):
        tally.docs += 1
        tally.chars += len(text)
        tally.bytes += len(text.encode("utf-8", "surrogatepass"))
        tally.tokens += len(ids)
        tally.byte_tokens += sum(1 for i in ids if i in model.byte_ids and i != newline)
        tally.newline_byte_tokens += sum(1 for i in ids if i == newline)
        tally.unk_tokens += sum(1 for i in ids if i == model.unk_id)
        tally.multi_digit_tokens += sum(1 for i in ids if i in multi_digit)
        if model.decode(ids) == text:
            tally.roundtrip_ok += 1
        elif len(tally.roundtrip_failures) < 5:
            tally.roundtrip_failures.append(doc_id)
    return tally


def collect_docs(inputs: Sequence[str], max_docs_per_lang: int) -> dict[str, list[tuple[str, str]]]:
    """Up to `max_docs_per_lang` (id, text) documents per language, in input order."""
    files = shard_files(resolve_inputs(inputs), ["id", "text", "lang"])
    docs: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for _, batch in iter_docs(files, ["id", "text", "lang"]):
        for doc_id, text, lang in zip(*(batch.column(c).to_pylist() for c in ("id", "text", "lang"))):
            if text and len(docs[str(lang)]) < max_docs_per_lang:
                docs[str(lang)].append((str(doc_id), text))
    if not docs:
        raise UserError("no documents with text in the evaluation input", file=", ".join(inputs))
    return dict(sorted(docs.items()))


def evaluate(model_paths: Sequence[str | Path], inputs: Sequence[str], max_docs_per_lang: int = 2000) -> dict:
    """Figures for every tokenizer in `model_paths` on the same held-out documents."""
    docs = collect_docs(inputs, max_docs_per_lang)
    report = {"inputs": [str(i) for i in inputs], "languages": {lang: len(d) for lang, d in docs.items()},
              "tokenizers": {}}
    for path in progress(model_paths, desc="evaluate", unit="tokenizer"):
        model = load_model(path)
        total, per_lang = Tally(), {}
        for lang, lang_docs in docs.items():
            tally = measure(model, lang_docs)
            per_lang[lang] = tally.figures(model.vocab_size)
            total.add(tally)
        per_lang["all"] = total.figures(model.vocab_size)
        report["tokenizers"][str(path)] = {"vocab_size": model.vocab_size, "by_language": per_lang}
    return report


def render_markdown(report: dict) -> str:
    names = list(report["tokenizers"])
    langs = list(next(iter(report["tokenizers"].values()))["by_language"])
    lines = ["# Tokenizer evaluation", "",
             "Held-out documents: " + ", ".join(f"{k} {v}" for k, v in report["languages"].items()), "",
             "| tokenizer | vocab |", "|---|---:|"]
    lines += [f"| `{n}` | {report['tokenizers'][n]['vocab_size']} |" for n in names]
    for metric in METRICS:
        lines += ["", f"## {metric}", "", "| language | " + " | ".join(f"`{Path(n).parent.name}/{Path(n).name}`" for n in names) + " |",
                  "|---|" + "---:|" * len(names)]
        for lang in langs:
            cells = [report["tokenizers"][n]["by_language"][lang][metric] for n in names]
            lines.append(f"| {lang} | " + " | ".join(f"{c:.4f}" if isinstance(c, float) else str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def default_inputs(model: Path) -> list[str]:
    heldout = model.parent / "heldout"
    if not heldout.is_dir():
        raise UserError("no input given and no held-out shards next to the model (set input=[SHARD_DIR,...])",
                        file=heldout)
    return [str(heldout)]


def evaluate_command(cfg: AppConfig) -> dict:
    if cfg.model_file is None or cfg.out is None:
        raise UserError("evaluate needs model_file=PATH/tokenizer.model and out=DIR (input defaults to its heldout/)")
    if Path(cfg.out).exists() and not cfg.overwrite:
        raise UserError("output directory already exists (pass overwrite=true to replace it)", file=cfg.out)
    inputs = list(cfg.input) or default_inputs(Path(cfg.model_file))
    report = evaluate([cfg.model_file, *cfg.evaluate.compare], inputs, cfg.evaluate.max_docs_per_lang)
    with atomic_dir(cfg.out, overwrite=cfg.overwrite) as tmp:
        atomic_write_json(tmp / "eval_report.json", report)
        atomic_write_text(tmp / "eval_report.md", render_markdown(report))
    print(render_markdown(report))
    return report
