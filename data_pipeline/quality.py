"""Quality model: a fastText supervised classifier (high vs low quality text).

`train_quality_model(cfg)` learns from positive and negative documents the user supplies
(files, globs or shard directories; negatives may also be a random sample of the raw input),
holds out a deterministic fraction and reports precision, recall and AUC; `label_probability`
turns a document into P(high quality). The harmful-content model is trained by the same code
with its own labels.
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


def load_texts(patterns: list[str], reader: ReaderConfig, lazy: bool = False):
    """The texts of the documents in the inputs (a list, or an iterator when `lazy`)."""
    texts = _iter_texts(patterns, reader)
    return texts if lazy else list(texts)


def _iter_texts(patterns: list[str], reader: ReaderConfig):
    bad = 0
    for path in expand_inputs(patterns):
        for record in read_unit(path, reader):
            if isinstance(record, Document):
                yield record.text
            else:
                bad += 1
    if bad:
        log.warning("%d unreadable records skipped in %s", bad, patterns)


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


def heldout_report(model, pos: list[str], neg: list[str], max_chars: int, threshold: float = 0.5,
                   label: str = HQ) -> dict:
    sp = [label_probability(model, model_text(t, max_chars), label) for t in pos]
    sn = [label_probability(model, model_text(t, max_chars), label) for t in neg]
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


def sample_texts(patterns: list[str], reader: ReaderConfig, size: int, seed: int) -> list[str]:
    """A uniform random sample of `size` documents of the inputs (reservoir sampling: one pass,
    `size` texts in memory), in input order. Every document of the inputs is read: for a large
    crawl, name a few of its files (a narrower glob) rather than all of it."""
    rng, reservoir, seen = random.Random(seed), [], 0
    for index, text in enumerate(load_texts(patterns, reader, lazy=True)):
        seen += 1
        if len(reservoir) < size:
            reservoir.append((index, text))
        else:
            slot = rng.randrange(seen)
            if slot < size:
                reservoir[slot] = (index, text)
    return [text for _, text in sorted(reservoir)]


def _split(texts: list[str], fraction: float) -> tuple[list[str], list[str]]:
    return [t for t in texts if not _is_heldout(t, fraction)], [t for t in texts if _is_heldout(t, fraction)]


TRAIN_NEGATIVES_MEANING = {"rejects": "the `negative` files", "raw_sample": "a random sample of `raw_sample`",
                           "both": "the `negative` files and a sample of `raw_sample`"}


def train_quality_model(cfg: QualityTrainConfig, reader: ReaderConfig, labels: tuple[str, str] = (HQ, LQ),
                        where: str = "quality_train") -> dict:
    """Train on positives vs the negatives `train_negatives` names (heuristic rejects, a random
    sample of the raw input, or both); report held-out precision, recall and AUC against the
    training negatives, and the AUC against each kind of negative given (`heldout_auc`)."""
    needs = {"rejects": ("negative",), "raw_sample": ("raw_sample",), "both": ("negative", "raw_sample")}
    missing = [key for key in ("positive", *needs[cfg.train_negatives]) if not getattr(cfg, key)]
    if missing:
        raise UserError(f"{where} needs {' and '.join(missing)} inputs (train_negatives={cfg.train_negatives}: "
                        f"{TRAIN_NEGATIVES_MEANING[cfg.train_negatives]})",
                        field=f"{where}.{missing[0]}", expected="lists of files, globs or shard directories")
    pos = load_texts(cfg.positive, reader)
    negatives = {"rejects": load_texts(cfg.negative, reader) if cfg.negative else [],
                 "raw_sample": sample_texts(cfg.raw_sample, reader, cfg.raw_sample_docs, cfg.seed)
                 if cfg.raw_sample else []}
    neg = [t for kind in ("rejects", "raw_sample") if cfg.train_negatives in (kind, "both") for t in negatives[kind]]
    if not pos or not neg:
        raise UserError(f"no documents read (positive {len(pos)}, negative {len(neg)})", field=where)
    pos_train, pos_held = _split(pos, cfg.heldout_fraction)
    neg_train, neg_held = _split(neg, cfg.heldout_fraction)
    hq, lq = labels
    lines = [f"{label} {model_text(t, cfg.max_chars)}\n" for label, texts in ((hq, pos_train), (lq, neg_train))
             for t in texts]
    random.Random(cfg.seed).shuffle(lines)
    with tempfile.TemporaryDirectory() as tmp:
        train_file = Path(tmp) / "train.txt"
        train_file.write_text("".join(lines), encoding="utf-8")
        model = train_fasttext(train_file, epoch=cfg.epoch, lr=cfg.lr, dim=cfg.dim, wordNgrams=cfg.word_ngrams,
                               bucket=cfg.bucket, minCount=cfg.min_count, thread=1, seed=cfg.seed)
    with atomic_path(cfg.output) as tmp_model:
        model.save_model(str(tmp_model))
    report = {"model": str(cfg.output), "sha256": sha256_file(cfg.output), "bytes": Path(cfg.output).stat().st_size,
              "labels": list(labels), "train_negatives": cfg.train_negatives,
              "train_positive": len(pos_train), "train_negative": len(neg_train),
              **heldout_report(model, pos_held, neg_held, cfg.max_chars, label=hq),
              "heldout_auc": {kind: heldout_report(model, pos_held, _split(texts, cfg.heldout_fraction)[1],
                                                   cfg.max_chars, label=hq)["auc"]
                              for kind, texts in negatives.items() if texts}}
    atomic_write_json(report_path(cfg.output), report)
    return report


def report_path(model_path: str | Path) -> Path:
    return Path(f"{model_path}.report.json")


def label_probability(model, text: str, label: str = HQ) -> float:
    """P(label): e.g. high quality (HQ) for the quality model, harmful for the harmful model."""
    labels, probs = model.predict(text, k=2)
    for predicted, prob in zip(labels, probs):
        if predicted == label:
            return float(min(1.0, prob))
    return 0.0


@lru_cache(maxsize=2)
def _load(path: str):
    import fasttext

    return fasttext.load_model(path)


def load_model(path: str, task: str = "quality_train"):
    if not Path(path).is_file():
        raise UserError("model file does not exist", file=path,
                        expected=f"a model from `python -m data_pipeline task={task}`")
    return _load(str(Path(path).resolve()))


@lru_cache(maxsize=4)
def model_sha256(path: str) -> str:
    return sha256_file(path)
