"""`train`: sample text from shards, guard against a too-small corpus, train SentencePiece BPE.

Output directory (published atomically, complete or absent):
    tokenizer.model, tokenizer.vocab   the SentencePiece model
    train_summary.json                 ids, sample figures, lowest merge frequency, time, memory
    tokenizer_metadata.json            lets megatron-core's MegatronTokenizer.from_pretrained load it
    train.log                          SentencePiece's own log
    heldout/                           held-out documents (Arrow shards) that `evaluate` reads
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import sentencepiece as spm

from stack_common.atomic import atomic_dir, atomic_open, atomic_write_json, sha256_file
from stack_common.config import Checks, as_plain
from stack_common.errors import UserError
from stack_common.logging import get_logger
from stack_common.progress import progress

from .config import AppConfig, TokenizerConfig, check_sample, check_tokenizer, control_symbol_names
from .sample import COLUMNS, SampleStats, plan_keep_rates, planned_bytes, survey, write_sample
from .sources import resolve_inputs, shard_files

log = get_logger("tokenizer_training.train")
MERGE_LOG = re.compile(r"Merged: freq=(\d+) merges=(\d+)")


@dataclass
class SpmRun:
    seconds: float
    peak_rss_bytes: int
    merges_logged: int
    lowest_merge_frequency: int | None


def check_corpus_size(text_bytes: int, tok: TokenizerConfig, when: str) -> None:
    """Refuse a sample too small for the vocabulary: past that point the last merges are noise."""
    need = tok.vocab_size * tok.min_bytes_per_piece
    if text_bytes < need:
        raise UserError(
            f"corpus too small for vocab_size={tok.vocab_size}: {when} {text_bytes / 1e6:.2f} MB of text, "
            f"needs at least {need / 1e6:.2f} MB ({tok.min_bytes_per_piece} bytes per piece); "
            f"add text or lower tokenizer.vocab_size (e.g. tokenizer=small)")


def trainer_options(tok: TokenizerConfig, text_path: Path, prefix: Path) -> dict:
    """SentencePieceTrainer options: Baichuan 2 settings from the config, fixed special-token ids."""
    options = {
        "input": str(text_path), "model_prefix": str(prefix), "model_type": tok.model_type,
        "vocab_size": tok.vocab_size, "character_coverage": tok.character_coverage,
        "split_digits": tok.split_digits, "byte_fallback": tok.byte_fallback,
        "normalization_rule_name": tok.normalization_rule_name, "add_dummy_prefix": tok.add_dummy_prefix,
        "remove_extra_whitespaces": tok.remove_extra_whitespaces,
        "allow_whitespace_only_pieces": tok.allow_whitespace_only_pieces,
        "max_sentencepiece_length": tok.max_sentencepiece_length,
        "split_by_unicode_script": tok.split_by_unicode_script, "split_by_whitespace": tok.split_by_whitespace,
        "max_sentence_length": tok.max_sentence_length, "num_threads": tok.num_threads or os.cpu_count() or 1,
        "unk_id": 0, "bos_id": 1, "eos_id": 2, "pad_id": -1,
        "unk_piece": tok.unk_piece, "bos_piece": tok.bos_piece, "eos_piece": tok.eos_piece,
        "control_symbols": control_symbol_names(tok),
        # The sample is already capped and chosen by our seeded sampler: SentencePiece takes it all.
        "input_sentence_size": 0, "shuffle_input_sentence": False,
    }
    options.update(tok.extra)
    return options


def run_sentencepiece(options: dict, workdir: Path, log_path: Path, expected_merges: int) -> SpmRun:
    """Train in a child process; stream its log to `log_path` and a progress bar."""
    options_path = workdir / "trainer_options.json"
    options_path.write_text(json.dumps(options, ensure_ascii=False, indent=1), encoding="utf-8")
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "tokenizer_training.spm_child", str(options_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, errors="replace")
    freqs: list[int] = []
    bar = progress(total=expected_merges, desc="sentencepiece merges", unit="merge")
    try:
        with open(log_path, "w", encoding="utf-8") as log_file:
            for line in proc.stderr:
                log_file.write(line)
                if match := MERGE_LOG.search(line):
                    freqs.append(int(match.group(1)))
                    bar.update(int(match.group(2)) - bar.n)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        bar.close()
        options_path.unlink(missing_ok=True)
    if proc.returncode != 0:
        tail = [ln.strip() for ln in log_path.read_text(encoding="utf-8").splitlines() if ln.strip()][-1:]
        hint = " (killed: trainer memory is about 9x the sample; lower sample.max_bytes)" if proc.returncode < 0 else ""
        raise UserError(f"SentencePiece training failed (exit {proc.returncode}){hint}: {' '.join(tail)}", file=log_path)
    return SpmRun(seconds=time.perf_counter() - start, peak_rss_bytes=usage.ru_maxrss * 1024,
                  merges_logged=len(freqs), lowest_merge_frequency=min(freqs) if freqs else None)


def drop_temporary_paths(model_path: Path) -> None:
    """SentencePiece stores its input and output paths in the model; ours are temporary names,
    which would make two identical trainings differ byte for byte."""
    from sentencepiece import sentencepiece_model_pb2

    model = sentencepiece_model_pb2.ModelProto()
    model.ParseFromString(model_path.read_bytes())
    del model.trainer_spec.input[:]
    model.trainer_spec.input.append("train_text.txt")
    model.trainer_spec.model_prefix = "tokenizer"
    with atomic_open(model_path, "wb") as fh:
        fh.write(model.SerializeToString())


def special_ids(model_path: Path, tok: TokenizerConfig) -> dict:
    """The ids the rest of the stack relies on, read back from the trained model."""
    sp = spm.SentencePieceProcessor(model_file=str(model_path))
    controls = control_symbol_names(tok)
    for offset, name in enumerate(controls):
        if sp.piece_to_id(name) != 3 + offset:
            raise RuntimeError(f"control symbol {name} landed on id {sp.piece_to_id(name)}, not {3 + offset}")
    chat = {name: sp.piece_to_id(name) for name in ("<reserved_106>", "<reserved_107>") if name in controls}
    return {"vocab_size": sp.get_piece_size(), "unk_id": sp.unk_id(), "bos_id": sp.bos_id(), "eos_id": sp.eos_id(),
            "eod_id": sp.eos_id(), "pad_id": tok.pad_id, "num_control_symbols": len(controls),
            "first_byte_piece_id": sp.piece_to_id("<0x00>") if tok.byte_fallback else None, "chat_token_ids": chat}


def validate(cfg: AppConfig) -> None:
    checks = Checks()
    checks.require(cfg.out is not None, "out: set the output directory (out=DIR)")
    check_tokenizer(cfg.tokenizer, checks)
    check_sample(cfg.sample, checks)
    checks.raise_if_any()
    if Path(cfg.out).exists() and not cfg.overwrite:
        raise UserError("output directory already exists (pass overwrite=true to replace it)", file=cfg.out)


def train(cfg: AppConfig) -> dict:
    """Run the whole `train` command; returns the summary written to OUT/train_summary.json."""
    validate(cfg)
    tok = cfg.tokenizer
    dirs = resolve_inputs(cfg.input)
    files = shard_files(dirs, COLUMNS)
    started = time.perf_counter()
    stats: SampleStats = survey(files, cfg.sample)
    stats.keep_rate = plan_keep_rates(stats, cfg.sample)
    check_corpus_size(planned_bytes(stats, stats.keep_rate), tok, "the planned sample holds")
    with atomic_dir(cfg.out, overwrite=cfg.overwrite) as tmp:
        text_path = tmp / "train_text.txt"
        write_sample(files, cfg.sample, stats, text_path, tmp / "heldout", tok.max_sentence_length)
        check_corpus_size(stats.kept_bytes, tok, "the sample holds")
        log.info("training %s vocab=%d on %.1f MB, %d lines", tok.model_type, tok.vocab_size,
                 stats.kept_bytes / 1e6, stats.kept_lines)
        options = trainer_options(tok, text_path, tmp / "tokenizer")
        meta = 3 + len(control_symbol_names(tok)) + (256 if tok.byte_fallback else 0)
        run = run_sentencepiece(options, tmp, tmp / "train.log", max(1, tok.vocab_size - meta))
        text_path.unlink()
        drop_temporary_paths(tmp / "tokenizer.model")
        ids = special_ids(tmp / "tokenizer.model", tok)
        summary = {
            "model": "tokenizer.model", "sha256": sha256_file(tmp / "tokenizer.model"), **ids,
            "lowest_merge_frequency": run.lowest_merge_frequency,
            "lowest_merge_frequency_note": "lowest frequency among merges SentencePiece logs (every 100th)",
            "sentencepiece_seconds": round(run.seconds, 2), "total_seconds": round(time.perf_counter() - started, 2),
            "sentencepiece_peak_rss_bytes": run.peak_rss_bytes, "sentencepiece_version": spm.__version__,
            "inputs": [str(d) for d in dirs], "sample": stats.as_dict(),
            "sample_config": as_plain(cfg.sample), "tokenizer_config": as_plain(tok),
            "trainer_options": {k: v for k, v in options.items() if k not in ("input", "model_prefix")},
        }
        atomic_write_json(tmp / "train_summary.json", summary)
        atomic_write_json(tmp / "tokenizer_metadata.json", {"library": "sentencepiece", "class_name": None,
                                                            "class_path": None, "model_type": "gpt",
                                                            "chat_template": None})
    if run.lowest_merge_frequency is not None and run.lowest_merge_frequency < 2:
        log.warning("the last merges had frequency %d, i.e. they are noise: the sample is too small for "
                    "vocab_size=%d", run.lowest_merge_frequency, tok.vocab_size)
    log.info("wrote %s: vocab %d, lowest logged merge frequency %s, %.1f s, peak RSS %.2f GB", cfg.out,
             ids["vocab_size"], run.lowest_merge_frequency, run.seconds, run.peak_rss_bytes / 2 ** 30)
    return summary
