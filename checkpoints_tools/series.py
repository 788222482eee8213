"""Intermediate-checkpoint series: export every kept checkpoint of a run to a directory named by
tokens consumed (train_00220B, or K/M units for small runs), then evaluate each export on held-out
perplexity and lm-eval tasks, and write a table (CSV, JSON, Markdown), PNG plots and
TensorBoard scalars of every metric against tokens."""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from stack_common.atomic import atomic_path, atomic_write_json, atomic_write_text, read_json
from stack_common.errors import UserError
from stack_common.logging import get_logger

from .export import EXPORT_META, export_hf
from .inspect_run import inspect_run

log = get_logger("checkpoints_tools.series")

UNITS = (("B", 10**9), ("M", 10**6), ("K", 10**3), ("", 1))


# ----------------------------------------------------------------------------- export-series

def planned_tokens(ckpt_dir: str | Path) -> int | None:
    """Tokens the run was configured to train on (fixed for a run), from the checkpoint's meta.json."""
    try:
        meta = read_json(Path(ckpt_dir) / "meta.json")
        training = meta["config"]["training"]
        seq = training.get("seq_length") or meta["model"]["seq_length"]
        return int(training["train_iters"]) * int(training["global_batch_size"]) * int(seq)
    except (OSError, KeyError, TypeError, ValueError):
        return None


def series_unit(planned: int) -> tuple[str, int]:
    """The largest unit in which the planned run has at least 10 units: B for Baichuan-sized runs."""
    return next((unit, scale) for unit, scale in UNITS if planned // scale >= 10 or scale == 1)


def series_names(tokens: list[int], iterations: list[int], planned: int) -> list[str]:
    """Names that depend only on each checkpoint and the planned run, so they never change as the
    run grows (an export-series that follows a job keeps its earlier exports). Two checkpoints
    that round to the same count: the later one gets its iteration appended (checkpoints arrive in
    token order, so an earlier name never changes)."""
    unit, scale = series_unit(planned)
    names, seen = [], set()
    for t, i in sorted(zip(tokens, iterations)):
        name = f"train_{round(t / scale):05d}{unit}"
        names.append(f"{name}_iter{i:07d}" if name in seen else name)
        seen.add(name)
    return names


def export_series(run_dir: str | Path, out_dir: str | Path, fmt: str = "llama", dtype: str = "auto",
                  tokenizer: str | None = None, milestones_only: bool = False,
                  overwrite: bool = False) -> list[Path]:
    """Export every complete checkpoint the run still keeps on disk (with milestones_only, only
    those kept for good: keep=true in meta.json). Exports that already exist are skipped, so
    the command can follow a running job."""
    report = inspect_run(run_dir)
    rows = [r for r in report["checkpoints"] if r["status"] == "ok"]
    for r in report["checkpoints"]:
        if r["status"] != "ok":
            log.warning(f"skipping {r['name']}: {r['problem']}")
    chosen = [r for r in rows if not milestones_only or r.get("keep")]
    if not chosen:
        raise UserError("no complete checkpoint to export" + (" with keep=true" if milestones_only else ""),
                        file=report["checkpoints_dir"])
    chosen.sort(key=lambda r: r["consumed_tokens"] or 0)
    tokens = [int(r["consumed_tokens"] or 0) for r in chosen]
    if len(set(tokens)) != len(tokens):
        raise UserError("two checkpoints report the same consumed_tokens", file=report["checkpoints_dir"],
                        field="consumed_tokens")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    done = []
    planned = planned_tokens(chosen[-1]["path"]) or max(tokens)
    for row, name in zip(chosen, series_names(tokens, [int(r["iteration"]) for r in chosen], planned)):
        target = out_dir / name
        if target.exists() and not overwrite:
            log.info(f"{target} exists, skipping")
        else:
            export_hf(row["path"], target, fmt=fmt, dtype=dtype, tokenizer=tokenizer,
                      overwrite=overwrite, extra_meta={"series_name": name})
        done.append(target)
    return done


# ----------------------------------------------------------------------------- eval-series

def list_exports(exports_dir: Path) -> list[tuple[int, Path]]:
    if not exports_dir.is_dir():
        raise UserError("exports directory does not exist", file=exports_dir)
    found = []
    for d in sorted(exports_dir.glob("train_*")):
        if (d / EXPORT_META).is_file():
            found.append((int(read_json(d / EXPORT_META).get("consumed_tokens") or 0), d))
    if not found:
        raise UserError("no exports found", file=exports_dir, expected="train_* directories from export-series")
    return sorted(found)


def load_model(export_dir: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(export_dir, trust_remote_code=True, dtype=torch.float32)
    model.eval()
    tok = AutoTokenizer.from_pretrained(export_dir, trust_remote_code=True) if (export_dir / "tokenizer_config.json").is_file() else None
    return model, tok


def heldout_sources(text_files, data_prefixes) -> list[tuple[str, str, str]]:
    """(metric name, kind, path): one perplexity per held-out file, named by its stem."""
    sources = [(f"ppl/{Path(p).stem}", "text", p) for p in text_files]
    sources += [(f"ppl/{Path(p.removesuffix('.bin').removesuffix('.idx')).name}", "data", p)
                for p in data_prefixes]
    return sources


def heldout_tokens(tokenizer, kind: str, path: str, max_tokens: int) -> list[int]:
    """Token ids of one held-out source: an encoded megatron dataset (.bin/.idx) or a text file."""
    if kind == "data":
        from megatron.core.datasets.indexed_dataset import IndexedDataset

        ds = IndexedDataset(path.removesuffix(".bin").removesuffix(".idx"))
        ids: list[int] = []
        for i in range(len(ds)):
            ids.extend(int(t) for t in ds[i])
            if len(ids) >= max_tokens:
                break
        return ids[:max_tokens]
    if tokenizer is None:
        raise UserError("perplexity on text needs the tokenizer in the export", file=path)
    return tokenizer(Path(path).read_text(encoding="utf-8"))["input_ids"][:max_tokens]


def perplexity(model, ids: list[int], seq_length: int) -> float:
    """exp(mean next-token loss) over non-overlapping windows of seq_length tokens."""
    import torch

    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, max(len(ids) - 1, 0), seq_length):
            window = torch.tensor(ids[start:start + seq_length + 1])[None]
            if window.shape[1] < 2:
                break
            logits = model(window[:, :-1]).logits.float()
            loss = torch.nn.functional.cross_entropy(logits[0], window[0, 1:], reduction="sum")
            total += loss.item()
            count += window.shape[1] - 1
    if count == 0:
        raise UserError("held-out set has fewer than 2 tokens")
    return math.exp(total / count)


def lm_eval_metrics(export_dir: Path, tasks: list[str], include_path: str | None, limit) -> dict[str, float]:
    """Run the lm-eval harness on one export; returns {task/metric: value}."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    from .lm_eval_adapter import ExportedCausalLM

    model, tok = load_model(export_dir)
    if tok is None:
        raise UserError("lm-eval needs the tokenizer in the export", file=export_dir)
    manager = TaskManager(include_path=include_path) if include_path else TaskManager()
    results = lm_eval.simple_evaluate(model=ExportedCausalLM(model, tok), tasks=tasks,
                                      task_manager=manager, limit=limit, log_samples=False)
    metrics = {}
    for task, values in results["results"].items():
        for key, value in values.items():
            if "," in key and "stderr" not in key and isinstance(value, (int, float)):
                metrics[f"{task}/{key.split(',')[0]}"] = float(value)
    return metrics


def eval_series(exports_dir: str | Path, out_dir: str | Path | None = None, text_files=(),
                data_prefixes=(), tasks=(), include_path: str | None = None, limit=None,
                max_tokens: int = 65536, seq_length: int | None = None) -> list[dict]:
    exports_dir = Path(exports_dir)
    out_dir = Path(out_dir) if out_dir else exports_dir / "eval"
    exports = list_exports(exports_dir)
    if not (text_files or data_prefixes or tasks):
        raise UserError("nothing to evaluate", expected="--text, --data and/or --tasks")
    for path in text_files:          # every input checked before the first model is loaded
        if not Path(path).is_file():
            raise UserError("held-out text file does not exist", file=path)
    for prefix in data_prefixes:
        prefix = prefix.removesuffix(".bin").removesuffix(".idx")
        for ext in (".bin", ".idx"):
            if not Path(prefix + ext).is_file():
                raise UserError("encoded dataset file missing", file=prefix + ext)
    rows = []
    for tokens, export in exports:
        row = {"name": export.name, "tokens": tokens}
        if text_files or data_prefixes:
            model, tok = load_model(export)
            window = seq_length or min(model.config.max_position_embeddings, 1024)
            for name, kind, path in heldout_sources(text_files, data_prefixes):
                row[name] = perplexity(model, heldout_tokens(tok, kind, path, max_tokens), window)
            del model
        if tasks:
            row.update(lm_eval_metrics(export, list(tasks), include_path, limit))
        log.info(f"{export.name}: " + ", ".join(f"{k}={v:.4g}" for k, v in row.items()
                                                  if isinstance(v, float)))
        rows.append(row)
    write_tables(rows, out_dir)
    return rows


# ----------------------------------------------------------------------------- reports

def metric_names(rows: list[dict]) -> list[str]:
    names = []
    for row in rows:
        names += [k for k, v in row.items() if isinstance(v, float) and k not in names]
    return names


def write_tables(rows: list[dict], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    columns = ["name", "tokens"] + metric_names(rows)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out_dir / "series.csv", buf.getvalue())
    atomic_write_json(out_dir / "series.json", rows)
    md = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        md.append("| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |")
    atomic_write_text(out_dir / "series.md", "\n".join(md) + "\n")
    plot(rows, out_dir)
    tensorboard(rows, out_dir / "tensorboard")


def _fmt(value) -> str:
    return "" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def plot(rows: list[dict], out_dir: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for metric in metric_names(rows):
        points = [(r["tokens"], r[metric]) for r in rows if metric in r]
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o")
        ax.set_xlabel("tokens consumed")
        ax.set_ylabel(metric)
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        with atomic_path(out_dir / f"plot_{metric.replace('/', '_')}.png") as tmp:
            fig.savefig(tmp, format="png", dpi=100)
        plt.close(fig)


def tensorboard(rows: list[dict], tb_dir: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tb_dir))
    for row in rows:
        for metric in metric_names([row]):
            writer.add_scalar(f"series/{metric}", row[metric], global_step=row["tokens"])
    writer.close()

