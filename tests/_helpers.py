"""Helpers shared by test files: a SentencePiece model with the project's settings, and the
project's CLIs run as a user would."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def train_sentencepiece(out: Path, vocab_size: int = 1000) -> Path:
    """A SentencePiece model with the tokenizer package's Baichuan 2 settings, on data/sample."""
    import pyarrow.parquet as pq
    import sentencepiece as spm

    from tokenizer_training.config import TokenizerConfig
    from tokenizer_training.train import trainer_options

    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for lang in ("en", "zh", "code"):
        lines += pq.read_table(REPO / "data" / "sample" / f"{lang}.parquet").column("text").to_pylist()[:60]
    (out / "text.txt").write_text("\n".join(lines), encoding="utf-8")
    options = trainer_options(TokenizerConfig(vocab_size=vocab_size, character_coverage=0.98, num_threads=2),
                              out / "text.txt", out / "tokenizer")
    spm.SentencePieceTrainer.train(**options, minloglevel=2)
    return out / "tokenizer.model"


def cli(module: str, *args, timeout: float | None = 300) -> subprocess.CompletedProcess:
    """`python -m module args` from the repository root, outside any torchrun environment."""
    env = dict(os.environ, OMP_NUM_THREADS="1", BC_NO_PROGRESS="1", PYTHONPATH=str(REPO))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
