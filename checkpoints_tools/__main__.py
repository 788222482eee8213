"""`python -m checkpoints_tools {inspect,export-hf,import-hf,export-series,eval-series,dynamics,...}`."""
from __future__ import annotations

import argparse
import sys

from stack_common.errors import UserError, report_user_errors


def parse_size(text: str) -> int:
    units = {"KB": 2**10, "MB": 2**20, "GB": 2**30}
    for unit, scale in units.items():
        if text.upper().endswith(unit):
            return int(float(text[: -len(unit)]) * scale)
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m checkpoints_tools",
                                description="Inspect, convert and evaluate megatron-core checkpoints.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("inspect", help="list the checkpoints of a run")
    s.add_argument("run_dir")
    s.add_argument("--json", action="store_true", help="JSON for scripts instead of a table")

    def export_options(s):
        s.add_argument("--format", default="llama", choices=["llama", "baichuan"])
        s.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                       help="auto: the checkpoint's dtype")
        s.add_argument("--tokenizer", help="HF tokenizer dir or SentencePiece .model "
                                           "(default: the one recorded in meta.json)")
        s.add_argument("--overwrite", action="store_true")

    s = sub.add_parser("export-hf", help="dist checkpoint -> Hugging Face directory")
    s.add_argument("checkpoint", help="RUN_DIR/checkpoints/iter_NNNNNNN, or RUN_DIR for the latest")
    s.add_argument("--out", required=True)
    s.add_argument("--max-shard-size", default="1GB")
    s.add_argument("--with-optimizer", action="store_true",
                   help="also copy the whole checkpoint (optimizer, schedule, data position) into "
                        "OUT/megatron_checkpoint, to continue with checkpoint.load=OUT/megatron_checkpoint")
    export_options(s)

    s = sub.add_parser("import-hf", help="Hugging Face directory -> dist checkpoint")
    s.add_argument("hf_dir")
    s.add_argument("--out", required=True, help="checkpoint directory to create")
    s.add_argument("--tp", type=int, default=1)
    s.add_argument("--pp", type=int, default=1)
    s.add_argument("--vpp", type=int, default=None)
    s.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    s.add_argument("--tokenizer", help="tokenizer.model to record (default: the HF dir's)")
    s.add_argument("--position", choices=["rope", "alibi"],
                   help="position type when neither config.json nor modeling_baichuan.py tells it")
    s.add_argument("--overwrite", action="store_true")

    s = sub.add_parser("export-series", help="export every kept checkpoint, named by tokens")
    s.add_argument("run_dir")
    s.add_argument("--out", required=True)
    s.add_argument("--milestones-only", action="store_true",
                   help="only checkpoints kept for good (keep=true), not the rolling ones")
    export_options(s)

    for name, what in (("batches", "the documents in each micro-batch of a step"),
                       ("seen", "tokens fed per dataset, source and language up to a step")):
        s = sub.add_parser(name, help=f"{what} (from the run's dataset indices, no training)")
        s.add_argument("run_dir")
        s.add_argument("--step", type=int, required=True, help="optimizer step, counted from 1")
        s.add_argument("--json", action="store_true", help="JSON for scripts instead of text")
        if name == "batches":
            s.add_argument("--dp", type=int, default=None,
                           help="data-parallel size (default: the one of the checkpoint at or after the step)")

    s = sub.add_parser("eval-series", help="evaluate every export of a series")
    s.add_argument("exports_dir")
    s.add_argument("--out", help="default: EXPORTS/eval")
    s.add_argument("--text", nargs="*", default=[], help="held-out text files")
    s.add_argument("--data", nargs="*", default=[], help="held-out encoded datasets (.bin/.idx prefix)")
    s.add_argument("--max-tokens", type=int, default=65536)
    s.add_argument("--seq-length", type=int, default=None)
    s.add_argument("--tasks", nargs="*", default=[], help="lm-eval task names (e.g. ceval-valid, mmlu, cmmlu)")
    s.add_argument("--include-path", help="directory of local lm-eval task YAMLs")
    s.add_argument("--limit", type=float, default=None,
                   help="lm-eval examples per task (a fraction when below 1)")
    s.add_argument("--num-fewshot", type=int, default=None, help="lm-eval few-shot examples (default: the task's)")
    s.add_argument("--batch-size", type=int, default=16, help="requests scored per forward pass")
    s.add_argument("--compare", action="append", default=[], metavar="OTHER_SERIES_DIR",
                   help="another eval-series output (another run, released checkpoints) drawn on the "
                        "same axes; repeatable")
    s.add_argument("--label", help="this series' name in legends (default: the run's directory name)")

    s = sub.add_parser("make-task", help="a local lm-eval cloze task from held-out text")
    s.add_argument("text_file")
    s.add_argument("--out", required=True, help="task directory (eval-series --include-path)")
    s.add_argument("--name", required=True, help="task name (letters, digits, _)")
    s.add_argument("--items", type=int, default=100)
    s.add_argument("--seed", type=int, default=0)

    s = sub.add_parser("dynamics", help="weight norms, changes, NormHead and embedding norms over a series")
    s.add_argument("exports_dir")
    s.add_argument("--out", help="default: EXPORTS/dynamics")
    s.add_argument("--tensorboard", help="the run's TensorBoard directory (default: found from export_meta.json)")
    s.add_argument("--data", nargs="*", default=None,
                   help="encoded training data (.bin/.idx prefixes) for token frequencies "
                        "(default: the run's data.paths; else the tokenizer's piece scores)")
    return p


def resolve_checkpoint(path: str):
    """A checkpoint dir, or a run dir whose `latest` pointer names one."""
    from pathlib import Path

    p = Path(path)
    for root in (p / "checkpoints", p):
        if (root / "latest").is_file():
            return root / (root / "latest").read_text().strip()
    return p


@report_user_errors
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "inspect":
        from .inspect_run import format_table, inspect_run, to_json

        report = inspect_run(args.run_dir)
        print(to_json(report) if args.json else format_table(report))
    elif args.command == "export-hf":
        from .export import export_hf

        export_hf(resolve_checkpoint(args.checkpoint), args.out, fmt=args.format, dtype=args.dtype,
                  tokenizer=args.tokenizer, overwrite=args.overwrite,
                  max_shard_bytes=parse_size(args.max_shard_size), with_optimizer=args.with_optimizer)
    elif args.command == "import-hf":
        from .import_hf import import_hf

        import_hf(args.hf_dir, args.out, tp=args.tp, pp=args.pp, vpp=args.vpp, dtype=args.dtype,
                  overwrite=args.overwrite, tokenizer=args.tokenizer, position=args.position)
    elif args.command == "export-series":
        from .series import export_series

        for path in export_series(args.run_dir, args.out, fmt=args.format, dtype=args.dtype,
                                  tokenizer=args.tokenizer, milestones_only=args.milestones_only,
                                  overwrite=args.overwrite):
            print(path)
    elif args.command in ("batches", "seen"):
        from . import provenance as P

        data = P.load_run_data(args.run_dir, args.step, dp=getattr(args, "dp", None))
        if args.command == "batches":
            report = P.step_batches(data, args.step)
            print(P.to_json(report) if args.json else P.format_batches(report))
        else:
            report = P.tokens_seen(data, args.step)
            print(P.to_json(report) if args.json else P.format_seen(report))
    elif args.command == "eval-series":
        from .series import eval_series

        limit = int(args.limit) if args.limit and args.limit >= 1 else args.limit
        rows = eval_series(args.exports_dir, args.out, text_files=args.text, data_prefixes=args.data,
                           tasks=args.tasks, include_path=args.include_path, limit=limit,
                           num_fewshot=args.num_fewshot, batch_size=args.batch_size,
                           max_tokens=args.max_tokens, seq_length=args.seq_length,
                           compare=args.compare, label=args.label)
        from .series import metric_names

        names = metric_names(rows)
        print("\t".join(["name", "tokens", *names]))
        for row in rows:
            print("\t".join([row["name"], str(row["tokens"]),
                             *(f"{row[n]:.4f}" if n in row else "" for n in names)]))
    elif args.command == "make-task":
        from .local_tasks import write_cloze_task

        print(write_cloze_task(args.text_file, args.out, args.name, n_items=args.items, seed=args.seed))
    elif args.command == "dynamics":
        from .dynamics import format_summary, training_dynamics

        print(format_summary(training_dynamics(args.exports_dir, args.out, tb_dir=args.tensorboard,
                                               data=args.data)))
    else:  # argparse rejects unknown commands first
        raise UserError(f"unknown command {args.command}")


if __name__ == "__main__":
    main(sys.argv[1:])
