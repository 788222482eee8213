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


KILL_AFTER_CALLS = """
import importlib, json, os, signal, sys
from pathlib import Path
from data_pipeline.dedup import GLOBAL_STAGES
src, out, stage, target, after, cfg = sys.argv[1:7]
module, attr = target.split(".", 1)
owner = importlib.import_module(f"data_pipeline.dedup.{module}")
if "." in attr:
    cls_name, attr = attr.split(".")
    owner = getattr(owner, cls_name)
original, calls = getattr(owner, attr), [0]
def killing(*args, **kwargs):
    result = original(*args, **kwargs)
    calls[0] += 1
    if calls[0] == int(after):
        os.kill(os.getpid(), signal.SIGKILL)
    return result
setattr(owner, attr, killing)
GLOBAL_STAGES[stage](Path(src), Path(out), json.loads(cfg), 1, "local", None)
"""


def run_killed_stage(src: Path, out: Path, stage: str, target: str, after: int, cfg: dict | None = None):
    """Run a global dedup stage in a subprocess that SIGKILLs itself after the `after`-th call of
    `target` ("<dedup module>.<function>" or "<module>.<Class>.<method>").
    The subprocess inherits the environment: OPENBLAS_CORETYPE and the like choose the BLAS kernels, and
    a float computed with another kernel may round differently (semantic dedup's cluster distances did)."""
    import json

    return subprocess.run([sys.executable, "-c", KILL_AFTER_CALLS, str(src), str(out), stage, target, str(after),
                           json.dumps(cfg or {})], cwd=Path(__file__).resolve().parents[1], capture_output=True,
                          text=True, env=dict(os.environ, BC_NO_PROGRESS="1"))
