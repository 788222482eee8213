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
    generations: list = field(default_factory=list)
    export: Path | None = None

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
    demo.run("data pipeline: train the fastText quality model (held-out AUC vs rejects and vs a raw sample)",
             [PY, "-m", "data_pipeline", "task=quality_train",
              f"quality_train.positive=[{REPO}/data/sample/en.parquet,{REPO}/data/sample/zh.parquet]",
              f"quality_train.negative=[{demo.path('heuristic')}/stages/*_filter/excluded]",
              f"quality_train.raw_sample=[{demo.path('raw')}/raw-*.jsonl*]", "quality_train.raw_sample_docs=300",
              f"quality_train.output={demo.path('quality.bin')}"])
    demo.run("data pipeline: all stages (harmful, filters, PII, decontamination, quality; document, paragraph, "
             "sentence and semantic dedup; cluster balancing)",
             [PY, "-m", "data_pipeline", raw, f"output={demo.path('clean')}", "workers=2",
              f"quality.model={demo.path('quality.bin')}",
              f"decontaminate.eval_sets={{demo: [{REPO}/data/sample/eval_demo.jsonl]}}",
              "stages=[normalize,harmful,clean_lines,filter,pii,decontaminate,quality,exact_dedup,minhash_dedup,"
              "line_dedup@paragraph,line_dedup@sentence,semantic_dedup,cluster_balance]",
              # the sample is small and topical (Shakespeare is one cluster): cap at 4x the median, not 2x
              "dedup.balance.cap_factor=4"])


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


def pretrain(demo: Demo) -> None:
    tokens = demo.path("tokens")
    tokens_per_iter = 16 * 128  # training=tiny: global batch 16, model=tiny_rope: sequence 128
    demo.run("pretraining: tiny Baichuan 2 (RoPE, NormHead, max-z loss), TP=2 on two processes",
             [PY, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "pretrain",
              "model=tiny_rope", "parallel=tp2", "training=tiny", "optimizer=tiny",
              f"data.paths=[{tokens}/zh_text_document,{tokens}/en_text_document]", "data.weights=[0.5,0.5]",
              f"checkpoint.dir={demo.path('run')}", f"training.train_iters={demo.train_iters}",
              f"training.eval_interval={demo.train_iters // 4}",
              f"checkpoint.save_interval={demo.train_iters // 4}",
              f"checkpoint.milestone_every_tokens={demo.train_iters // 4 * tokens_per_iter}",
              "checkpoint.milestone_step0=true", "checkpoint.milestone_log_steps=8"],
             env={"OMP_NUM_THREADS": "1"})


def checkpoints(demo: Demo) -> None:
    run, exports = demo.path("run"), demo.path("exports")
    demo.run("checkpoints: inspect the run (step 0, steps 1-8 log-spaced, then every quarter of the run)",
             [PY, "-m", "checkpoints_tools", "inspect", str(run)])
    demo.run("checkpoints: the documents in each micro-batch of step 4",
             [PY, "-m", "checkpoints_tools", "batches", str(run), "--step", "4"])
    demo.run("checkpoints: tokens seen per source and language by the end of the run",
             [PY, "-m", "checkpoints_tools", "seen", str(run), "--step", str(demo.train_iters)])
    demo.run("checkpoints: export the milestone series to Hugging Face (llama format)",
             [PY, "-m", "checkpoints_tools", "export-series", str(run), "--out", str(exports)])
    demo.run("checkpoints: evaluate the series on held-out text (perplexity vs tokens, plot)",
             [PY, "-m", "checkpoints_tools", "eval-series", str(exports),
              "--text", str(demo.path("raw", "heldout-en.txt")), str(demo.path("raw", "heldout-zh.txt"))])
    demo.run("checkpoints: training dynamics across the series (weight norms, changes, NormHead, embeddings)",
             [PY, "-m", "checkpoints_tools", "dynamics", str(exports), "--tensorboard", str(run / "tensorboard")])


def generate(demo: Demo) -> None:
    """Load the last export with plain transformers and continue a Chinese and an English prompt."""
    print("\n=== transformers: load the last export and generate", flush=True)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.time()
    last = sorted(p for p in demo.path("exports").iterdir() if p.name.startswith("train_"))[-1]
    tok = AutoTokenizer.from_pretrained(last)
    model = AutoModelForCausalLM.from_pretrained(last, dtype=torch.float32).eval()
    demo.generations = []
    for prompt in ("床前明月光，", "To be, or not to be"):
        ids = tok(prompt, return_tensors="pt").input_ids
        out = model.generate(ids, max_new_tokens=24, do_sample=False, pad_token_id=0)
        text = tok.decode(out[0][ids.shape[1]:], skip_special_tokens=True)
        demo.generations.append((prompt, text))
        print(f"  {prompt!r} -> {text!r}")
    demo.export = last
    demo.results.append(("transformers: load the last export and generate", time.time() - start))


STEPS: list = [raw_web, data_pipeline, tokenizer, pretrain, checkpoints, generate]


def print_summary(demo: Demo, seconds: float) -> None:
    data = read_json(demo.path("clean", "stats.json"))
    tok = read_json(demo.path("tokens", "encode_summary.json"))
    report = read_json(demo.path("tokenizer_report", "eval_report.json"))
    evals = read_json(demo.path("exports", "eval", "series.json"))
    print("\n" + "=" * 78)
    print(f"demo finished in {seconds / 60:.1f} min; every output is under {demo.out}")
    print(f"  data pipeline : {data['records_read']} records -> {data['docs_kept']} kept, "
          f"{data['docs_excluded']} excluded (per stage and reason in clean/stats.json), "
          f"{data['quarantined']} quarantined;  funnel: clean/funnel.png")
    print(f"  safety stages : {summarize_safety(data)}")
    print(f"  tokenizer     : {summarize_report(report)};  report: tokenizer_report/eval_report.md")
    print("  encoded       : " + ", ".join(f"{k} {v['tokens']:,} tokens" for k, v in tok["outputs"].items())
          + ";  indexed datasets: tokens/")
    print(f"  pretraining   : {summarize_series(evals)};  checkpoints: run/checkpoints")
    print(f"  exports       : {len([p for p in demo.path('exports').iterdir() if p.name.startswith('train_')])} "
          f"Hugging Face dirs in exports/ (plot: exports/eval/)")
    for prompt, text in demo.generations:
        print(f"  generate      : {prompt!r} -> {text!r}")
    print(f"  TensorBoard   : tensorboard --logdir {demo.path('run', 'tensorboard')}")
    print("  stage times   : " + ", ".join(f"{secs:.0f}s" for _, secs in demo.results) + " (in the order run)")


def summarize_safety(data: dict) -> str:
    stages = {s["stage"]: s for s in data["stages"]}
    harmful, pii, decon = stages["harmful"], stages["pii"], stages["decontaminate"]
    return (f"harmful removed {sum(harmful['excluded'].values())}, PII replaced "
            + (", ".join(f"{v} {k}" for k, v in pii["replaced"].items()) or "nothing")
            + f" in {pii['docs_changed']} docs, decontaminate removed "
            + (", ".join(f"{v} ({k})" for k, v in decon["hits"].items()) or "0"))


def summarize_report(report: dict) -> str:
    model = next(iter(report["tokenizers"].values()))
    rates = ", ".join(f"{lang} {v['compression_rate']:.3f}" for lang, v in model["by_language"].items())
    return f"{model['vocab_size']:,} pieces, compression rate {rates}"


def summarize_series(evals) -> str:
    rows = evals["rows"] if isinstance(evals, dict) else evals
    first, last = rows[0], rows[-1]
    ppl = [k for k in first if k.startswith("ppl/")]
    return "held-out perplexity " + ", ".join(
        f"{k.removeprefix('ppl/heldout-')} {first[k]:.0f} -> {last[k]:.0f}" for k in ppl) + \
        f" ({first['tokens']:,} -> {last['tokens']:,} tokens)"


if __name__ == "__main__":
    sys.exit(main())
