"""Benchmark: `checkpoints_tools seen` and `batches` on a run much longer than the tests', without
training: synthetic datasets, a run directory holding only config.yaml, megatron-core's indices
built as the trainer builds them.

    .venv/bin/python bench/bench_provenance.py [--work bench_out/provenance] [--docs 200000] [--steps 4000]

Prints the time to build the indices, `seen` at several steps (samples per second, peak RSS)
and one step of `batches`. Checks, from megatron-core's own objects rather than the code measured:
the tokens seen equal steps x global batch x seq_length, and each dataset's share equals
seq_length x the samples the BlendedDataset's dataset_index assigns to it.
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SEQ, GLOBAL, MICRO = 128, 64, 4


def make_data(work: Path, docs: int) -> list[str]:
    """Two datasets of `docs` documents, 20..400 tokens each, vocabulary 8000."""
    from pretrain.data import write_token_dataset

    rng = np.random.default_rng(0)
    prefixes = []
    for name in ("a", "b"):
        prefix = work / f"{name}_text_document"
        if not Path(f"{prefix}.idx").is_file():
            lengths = rng.integers(20, 400, size=docs)
            write_token_dataset(prefix, (rng.integers(3, 8000, size=n) for n in lengths), 8000)
        prefixes.append(str(prefix))
    return prefixes


def write_run(work: Path, prefixes: list[str], steps: int) -> Path:
    from omegaconf import OmegaConf

    run = work / f"run_{steps}"
    run.mkdir(parents=True, exist_ok=True)
    config = {"data": {"paths": prefixes, "weights": [0.7, 0.3], "split": [99, 1, 0],
                       "tokenizer": {"vocab_size": 8000, "eod_id": 2}},
              "training": {"train_iters": steps, "global_batch_size": GLOBAL, "micro_batch_size": MICRO,
                           "eval_interval": 0, "seed": 1234},
              "checkpoint": {"dir": str(run)}, "model": {"seq_length": SEQ}}
    (run / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(config)))
    return run


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", default="bench_out/provenance")
    parser.add_argument("--docs", type=int, default=200_000)
    parser.add_argument("--steps", type=int, default=4000)
    args = parser.parse_args()

    from checkpoints_tools import provenance as P

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    prefixes = make_data(work, args.docs)
    print(f"data: 2 x {args.docs:,} documents ({time.perf_counter() - start:.1f}s)")
    run = write_run(work, prefixes, args.steps)
    start = time.perf_counter()
    data = P.load_run_data(run, args.steps)
    print(f"indices for {args.steps:,} steps x {GLOBAL} samples: {time.perf_counter() - start:.1f}s")
    dataset_index = np.asarray(data.train.dataset_index)
    for step in (args.steps // 100, args.steps // 10, args.steps):
        start = time.perf_counter()
        seen = P.tokens_seen(data, step)
        took = time.perf_counter() - start
        n = step * GLOBAL
        assert seen["tokens"] == n * SEQ, (seen["tokens"], n * SEQ)
        for d, row in enumerate(seen["datasets"]):
            assert row["tokens"] == SEQ * int((dataset_index[:n] == d).sum()), row
        print(f"seen --step {step:>6,}: {n:>9,} samples in {took:6.2f}s = {n / took:12,.0f} samples/s, "
              f"peak RSS {peak_rss_mb():,.0f} MB; shares {[r['tokens'] / seen['tokens'] for r in seen['datasets']]}")
    start = time.perf_counter()
    report = P.step_batches(data, args.steps)
    print(f"batches --step {args.steps}: {len(report['micro_batches'])} micro-batches in "
          f"{time.perf_counter() - start:.2f}s")


if __name__ == "__main__":
    main()
