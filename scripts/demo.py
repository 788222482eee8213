"""`make demo`: the whole road on the bundled sample corpus, through the real CLIs.

raw web text -> data pipeline -> tokenizer (train, report, HF export, encode) -> pretraining
(TP=2 on two processes) -> checkpoint series export + evaluation -> transformers generate.

Every stage is the command a user would type; this script only chains them, times them and
prints a summary. `--small` shrinks the training run (used by the test suite).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable


@dataclass
class Demo:
    out: Path
    small: bool
    train_iters: int
    results: list = field(default_factory=list)

    def path(self, *parts: str) -> Path:
        return self.out.joinpath(*parts)

    def run(self, title: str, args: list[str], env: dict | None = None) -> None:
        """Run one CLI command, streaming its output; stop the demo if it fails."""
        print(f"\n=== {title}\n$ {shlex.join(args)}", flush=True)
        start = time.time()
        proc = subprocess.run(args, cwd=REPO, env={**os.environ, **(env or {})})
        seconds = time.time() - start
        if proc.returncode != 0:
            print(f"\n*** demo stopped: '{title}' exited with {proc.returncode} after {seconds:.0f}s", flush=True)
            sys.exit(proc.returncode)
        self.results.append((title, seconds))


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "demo_out"), help="output directory (recreated)")
    parser.add_argument("--small", action="store_true", help="a shorter training run (tests)")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    demo = Demo(out=out, small=args.small, train_iters=60 if args.small else 300)
    started = time.time()
    for step in STEPS:
        step(demo)
    print_summary(demo, time.time() - started)
    return 0


def raw_web(demo: Demo) -> None:
    demo.run("raw web layer of the bundled sample corpus",
             [PY, "-m", "stack_common.sample_corpus", str(demo.path("raw"))])


def data_pipeline(demo: Demo) -> None:
    raw = f"input={demo.path('raw')}/raw-*.jsonl*"
    demo.run("data pipeline: heuristic pass (negatives for the quality model)",
             [PY, "-m", "data_pipeline", raw, f"output={demo.path('heuristic')}", "workers=2"])
    demo.run("data pipeline: train the fastText quality model",
             [PY, "-m", "data_pipeline", "task=quality_train",
              f"quality_train.positive=[{REPO}/data/sample/en.parquet,{REPO}/data/sample/zh.parquet]",
              f"quality_train.negative=[{demo.path('heuristic')}/stages/*_filter/excluded]",
              f"quality_train.output={demo.path('quality.bin')}"])
    demo.run("data pipeline: all stages (filters, quality, exact / MinHash / line dedup)",
             [PY, "-m", "data_pipeline", raw, f"output={demo.path('clean')}", "workers=2",
              f"quality.model={demo.path('quality.bin')}",
              "stages=[normalize,clean_lines,filter,quality,exact_dedup,minhash_dedup,line_dedup]"])


def tokenizer(demo: Demo) -> None:
    tok, final = demo.path("tokenizer"), demo.path("clean", "final")
    demo.run("tokenizer: train a small Baichuan-2-style SentencePiece BPE",
             [PY, "-m", "tokenizer_training", "train", f"input=[{final}]", f"out={tok}", "tokenizer=small"])
    demo.run("tokenizer: evaluation report on held-out text",
             [PY, "-m", "tokenizer_training", "evaluate", f"model_file={tok}/tokenizer.model",
              f"out={demo.path('tokenizer_report')}"])
    demo.run("tokenizer: Hugging Face export",
             [PY, "-m", "tokenizer_training", "export-hf", f"model_file={tok}/tokenizer.model",
              f"out={demo.path('tokenizer_hf')}"])
    demo.run("tokenizer: encode to megatron indexed datasets (one per language)",
             [PY, "-m", "tokenizer_training", "encode", f"model_file={tok}/tokenizer.model", f"input=[{final}]",
              f"out={demo.path('tokens')}", "encode.workers=2"])


STEPS: list = [raw_web, data_pipeline, tokenizer]


def print_summary(demo: Demo, seconds: float) -> None:
    print("\n" + "=" * 72)
    print(f"demo finished in {seconds / 60:.1f} min; outputs under {demo.out}")
    for title, secs in demo.results:
        print(f"  {secs:7.1f}s  {title}")


if __name__ == "__main__":
    sys.exit(main())
