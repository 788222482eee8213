"""Quality model: a fastText supervised classifier (high vs low quality text).

`train_quality_model(cfg)` learns from positive and negative documents the user supplies
(files, globs or shard directories), holds out a deterministic fraction and reports
precision, recall and AUC; `QualityScorer` turns a document into P(high quality).
"""
from __future__ import annotations

import multiprocessing
import random
import re
import tempfile
import zlib
from functools import lru_cache
from pathlib import Path

from stack_common.atomic import atomic_path, atomic_write_json, sha256_file
from stack_common.errors import UserError
from stack_common.logging import get_logger

from .config import QualityTrainConfig, ReaderConfig
from .readers import Document, expand_inputs, read_unit

log = get_logger("data_pipeline.quality")
HQ, LQ = "__label__hq", "__label__lq"
HAN_CHAR_RE = re.compile(r"([\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff])")


def model_text(text: str, max_chars: int) -> str:
    """fastText splits on spaces: lower-case, one Han character per token, one line."""
    return " ".join(HAN_CHAR_RE.sub(r" \1 ", text[:max_chars].lower()).split())


def load_texts(patterns: list[str], reader: ReaderConfig) -> list[str]:
    texts, bad = [], 0
    for path in expand_inputs(patterns):
        for record in read_unit(path, reader):
            if isinstance(record, Document):
                texts.append(record.text)
            else:
                bad += 1
    if bad:
        log.warning("%d unreadable records skipped in %s", bad, patterns)
    return texts


def _is_heldout(text: str, fraction: float) -> bool:
    return zlib.crc32(text.encode("utf-8", "replace")) % 10_000 < fraction * 10_000


def auc(scores_pos: list[float], scores_neg: list[float]) -> float:
    """Probability that a random positive outranks a random negative (ties count half)."""
    if not scores_pos or not scores_neg:
        return float("nan")
    ranked = sorted([(s, 1) for s in scores_pos] + [(s, 0) for s in scores_neg])
    rank_sum, i = 0.0, 0
    while i < len(ranked):
        j = i
        while j < len(ranked) and ranked[j][0] == ranked[i][0]:
            j += 1
        mean_rank = (i + j + 1) / 2
        rank_sum += mean_rank * sum(label for _, label in ranked[i:j])
        i = j
    n_pos, n_neg = len(scores_pos), len(scores_neg)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def heldout_report(model, pos: list[str], neg: list[str], max_chars: int, threshold: float = 0.5) -> dict:
    sp = [hq_probability(model, model_text(t, max_chars)) for t in pos]
    sn = [hq_probability(model, model_text(t, max_chars)) for t in neg]
    tp = sum(s >= threshold for s in sp)
    fp = sum(s >= threshold for s in sn)
    return {"heldout_positive": len(pos), "heldout_negative": len(neg), "threshold": threshold,
            "precision": tp / (tp + fp) if tp + fp else float("nan"),
            "recall": tp / len(pos) if pos else float("nan"), "auc": auc(sp, sn)}


def train_fasttext(train_file: Path, attempts: int = 4, **params):
    """fastText supervised training, retried in a fresh interpreter when it reports NaN.

    fasttext-numpy2 sometimes diverges to NaN in a process that has already done other work (it
    depends on what was allocated before, not on the data: the same file and seed train cleanly
    in a new process), so the retries run in a spawned child and the parent loads its model."""
    import fasttext

    try:
        return fasttext.train_supervised(input=str(train_file), verbose=0, **params)
    except RuntimeError as err:
        if "NaN" not in str(err):
            raise UserError(f"fastText training failed ({err})", file=train_file) from None
    for attempt in range(2, attempts + 1):
        log.warning("fastText training hit NaN; retrying in a fresh process (attempt %d of %d)", attempt, attempts)
        with tempfile.TemporaryDirectory() as tmp:
            model_path = Path(tmp) / "model.bin"
            child = multiprocessing.get_context("spawn").Process(target=_train_and_save,
                                                                 args=(str(train_file), str(model_path), params))
            child.start()
            child.join()
            if child.exitcode == 0 and model_path.is_file():
                return fasttext.load_model(str(model_path))
    raise UserError(f"fastText training diverged (NaN) in {attempts} attempts; try a lower quality_train.lr",
                    file=train_file)


def _train_and_save(train_file: str, model_path: str, params: dict) -> None:
    import fasttext

    fasttext.train_supervised(input=train_file, verbose=0, **params).save_model(model_path)


def train_quality_model(cfg: QualityTrainConfig, reader: ReaderConfig) -> dict:
    if not cfg.positive or not cfg.negative:
        raise UserError("quality_train needs both positive and negative inputs", field="quality_train.positive/negative",
                        expected="lists of files, globs or shard directories")
    pos, neg = load_texts(cfg.positive, reader), load_texts(cfg.negative, reader)
    if not pos or not neg:
        raise UserError(f"no documents read (positive {len(pos)}, negative {len(neg)})", field="quality_train")
    split = {label: ([t for t in texts if not _is_heldout(t, cfg.heldout_fraction)],
                     [t for t in texts if _is_heldout(t, cfg.heldout_fraction)]) for label, texts in ((HQ, pos), (LQ, neg))}
    lines = [f"{label} {model_text(t, cfg.max_chars)}\n" for label, (train, _) in split.items() for t in train]
    random.Random(cfg.seed).shuffle(lines)
    with tempfile.TemporaryDirectory() as tmp:
        train_file = Path(tmp) / "train.txt"
        train_file.write_text("".join(lines), encoding="utf-8")
        model = train_fasttext(train_file, epoch=cfg.epoch, lr=cfg.lr, dim=cfg.dim, wordNgrams=cfg.word_ngrams,
                               bucket=cfg.bucket, minCount=cfg.min_count, thread=1, seed=cfg.seed)
    with atomic_path(cfg.output) as tmp_model:
        model.save_model(str(tmp_model))
    report = {"model": str(cfg.output), "sha256": sha256_file(cfg.output), "bytes": Path(cfg.output).stat().st_size,
              "train_positive": len(split[HQ][0]), "train_negative": len(split[LQ][0]),
              **heldout_report(model, split[HQ][1], split[LQ][1], cfg.max_chars)}
    atomic_write_json(report_path(cfg.output), report)
    return report


def report_path(model_path: str | Path) -> Path:
    return Path(f"{model_path}.report.json")


def hq_probability(model, text: str) -> float:
    labels, probs = model.predict(text, k=2)
    for label, prob in zip(labels, probs):
        if label == HQ:
            return float(min(1.0, prob))
    return 0.0


@lru_cache(maxsize=2)
def _load(path: str):
    import fasttext

    return fasttext.load_model(path)


def load_model(path: str):
    if not Path(path).is_file():
        raise UserError("quality model file does not exist", file=path,
                        expected="a model from `python -m data_pipeline task=quality_train`")
    return _load(str(Path(path).resolve()))


@lru_cache(maxsize=4)
def model_sha256(path: str) -> str:
    return sha256_file(path)
