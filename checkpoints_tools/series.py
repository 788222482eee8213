"""Intermediate-checkpoint series: export every kept checkpoint of a run to a directory named by
tokens consumed (train_00220B, or K/M units for small runs), then evaluate each export on held-out
perplexity and lm-eval tasks, and write a table (CSV, JSON, Markdown), PNG plots and
TensorBoard scalars of every metric against tokens."""
from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from stack_common.atomic import (atomic_path, atomic_write_json, atomic_write_text, is_tmp_name,
                                 read_json, read_json_file)
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

SERIES_FILE = "series.json"
CACHE_DIR = "cache"
MODEL_FILES = ("config.json", "model.safetensors.index.json", "pytorch_model.bin.index.json")


def tokens_from_name(name: str) -> int | None:
    """220000000000 for a released revision named train_00220B (K, M, B and T units)."""
    match = re.search(r"(\d+(?:\.\d+)?)([KMBT])(?:_|$)", name)
    if match is None:
        return None
    scale = {"K": 10**3, "M": 10**6, "B": 10**9, "T": 10**12}[match.group(2)]
    return round(float(match.group(1)) * scale)


def model_tokens(model_dir: Path) -> int:
    """Tokens seen by one model directory: export_meta.json's count, else its name (train_00220B)."""
    if (model_dir / EXPORT_META).is_file():
        return int(read_json_file(model_dir / EXPORT_META).get("consumed_tokens") or 0)
    tokens = tokens_from_name(model_dir.name)
    if tokens is None:
        raise UserError("cannot tell how many tokens this checkpoint has seen", file=model_dir,
                        expected=f"an {EXPORT_META} or a name like train_00220B")
    return tokens


def list_exports(exports_dir: Path) -> list[tuple[int, Path]]:
    """(tokens, model dir) in token order: the subdirectories holding a config.json (exports of a
    series, or released revisions saved as train_00220B/ ...), or `exports_dir` itself."""
    if not exports_dir.is_dir():
        raise UserError("exports directory does not exist", file=exports_dir)
    if (exports_dir / "config.json").is_file():
        return [(model_tokens(exports_dir), exports_dir)]
    found = [(model_tokens(d), d) for d in sorted(exports_dir.iterdir())
             if d.is_dir() and not is_tmp_name(d.name) and (d / "config.json").is_file()]
    if not found:
        raise UserError("no exports found", file=exports_dir,
                        expected="train_* directories from export-series, or Hugging Face model directories")
    return sorted(found)


def model_identity(model_dir: Path) -> dict:
    """Changes whenever the weights or config do (a re-export, a new download)."""
    files = sorted(p for p in model_dir.iterdir()
                   if p.name in MODEL_FILES or p.suffix in (".safetensors", ".bin"))
    return {"path": str(model_dir.resolve()),
            "files": {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in files}}


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
    return tokenizer(Path(path).read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"][:max_tokens]


def perplexity(model, ids: list[int], seq_length: int, batch_size: int = 8) -> float:
    """exp(mean next-token loss) over non-overlapping windows of seq_length tokens, the full
    windows scored `batch_size` at a time."""
    import torch

    windows = [ids[s:s + seq_length + 1] for s in range(0, max(len(ids) - 1, 0), seq_length)]
    windows = [w for w in windows if len(w) >= 2]
    if not windows:
        raise UserError("held-out set has fewer than 2 tokens")
    full = [w for w in windows if len(w) == len(windows[0])]
    batches = [full[i:i + batch_size] for i in range(0, len(full), batch_size)]
    batches += [[w] for w in windows[len(full):]]
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            tokens = torch.tensor(batch, device=device)
            logits = model(tokens[:, :-1]).logits.float()
            total += torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten(),
                                                       reduction="sum").item()
            count += tokens[:, 1:].numel()
    return math.exp(total / count)


class ResultCache:
    """One JSON per (model directory, task or held-out set) under OUT/cache/: a rerun evaluates
    only what is new or whose model, task or settings changed."""

    def __init__(self, out_dir: Path):
        self.dir = out_dir / CACHE_DIR

    def _path(self, model_dir: Path, what: str) -> Path:
        return self.dir / model_dir.name / (re.sub(r"[^\w.-]+", "_", what) + ".json")

    def get(self, model_dir: Path, what: str, key: dict):
        path = self._path(model_dir, what)
        if not path.is_file():
            return None
        record = read_json_file(path)
        return record.get("result") if record.get("key") == key else None

    def put(self, model_dir: Path, what: str, key: dict, result) -> None:
        atomic_write_json(self._path(model_dir, what), {"key": key, "result": result})


@dataclass
class EvalPlan:
    text_files: list = field(default_factory=list)
    data_prefixes: list = field(default_factory=list)
    tasks: list = field(default_factory=list)
    include_path: str | None = None
    limit: float | None = None
    num_fewshot: int | None = None
    batch_size: int = 16
    max_tokens: int = 65536
    seq_length: int | None = None

    def check_inputs(self) -> None:
        """Every input checked before the first model is loaded."""
        if not (self.text_files or self.data_prefixes or self.tasks):
            raise UserError("nothing to evaluate", expected="--text, --data and/or --tasks")
        for path in self.text_files:
            if not Path(path).is_file():
                raise UserError("held-out text file does not exist", file=path)
        for prefix in self.data_prefixes:
            prefix = prefix.removesuffix(".bin").removesuffix(".idx")
            for ext in (".bin", ".idx"):
                if not Path(prefix + ext).is_file():
                    raise UserError("encoded dataset file missing", file=prefix + ext)
        if self.include_path and not Path(self.include_path).is_dir():
            raise UserError("task directory does not exist", file=self.include_path, field="--include-path")


def heldout_key(plan: EvalPlan, kind: str, path: str, model: dict) -> dict:
    data = Path(path if kind == "text" else path.removesuffix(".bin").removesuffix(".idx") + ".bin")
    return {"model": model, "kind": kind, "file": str(data.resolve()),
            "stat": [data.stat().st_size, data.stat().st_mtime_ns],
            "max_tokens": plan.max_tokens, "seq_length": plan.seq_length}


def evaluate_model(model_dir: Path, plan: EvalPlan, cache: ResultCache, task_ids: dict,
                   manager) -> tuple[dict, dict]:
    """Metrics of one model directory (cached ones reused; the model loaded only when something
    is new), and the harness's report per task."""
    model = model_identity(model_dir)
    row, reports, pending = {}, {}, []
    for name, kind, path in heldout_sources(plan.text_files, plan.data_prefixes):
        key = heldout_key(plan, kind, path, model)
        cached = cache.get(model_dir, name, key)
        row.update({name: cached} if cached is not None else {})
        if cached is None:
            pending.append(("ppl", name, (kind, path), key))
    for task in plan.tasks:
        key = {"model": model, "task": task_ids[task], "num_fewshot": plan.num_fewshot, "limit": plan.limit}
        cached = cache.get(model_dir, f"task_{task}", key)
        if cached is not None:
            row.update(cached["metrics"])
            reports[task] = cached
        else:
            pending.append(("task", task, None, key))
    if pending:
        row_new, reports_new = _run_pending(model_dir, plan, cache, pending, manager)
        row.update(row_new)
        reports.update(reports_new)
    return row, reports


def _run_pending(model_dir: Path, plan: EvalPlan, cache: ResultCache, pending: list,
                 manager) -> tuple[dict, dict]:
    import gc

    import torch

    from .lm_eval_adapter import hf_lm, run_task

    lm = hf_lm(model_dir, batch_size=plan.batch_size)
    log.info(f"{model_dir.name}: {len(pending)} evaluation(s) on {lm.device} ({lm.model.dtype})")
    row, reports = {}, {}
    for what, name, source, key in pending:
        if what == "ppl":
            window = plan.seq_length or min(lm.max_length, 1024)
            ids = heldout_tokens(lm.tokenizer, *source, plan.max_tokens)
            row[name] = perplexity(lm.model, ids, window, plan.batch_size)
            cache.put(model_dir, name, key, row[name])
        else:
            report = run_task(lm, name, manager, plan.num_fewshot, plan.limit)
            cache.put(model_dir, f"task_{name}", key, report)
            row.update(report["metrics"])
            reports[name] = report
    del lm
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return row, reports


def eval_series(exports_dir: str | Path, out_dir: str | Path | None = None, plan: EvalPlan | None = None,
                compare=(), label: str | None = None, **plan_fields) -> list[dict]:
    """Evaluate every model directory of `exports_dir`; write series.{json,csv,md}, plots (with
    the series of `compare` on the same axes) and TensorBoard scalars under `out_dir`."""
    from .lm_eval_adapter import task_identity, task_manager

    plan = plan or EvalPlan(**plan_fields)
    exports_dir = Path(exports_dir)
    out_dir = Path(out_dir) if out_dir else exports_dir / "eval"
    exports = list_exports(exports_dir)
    plan.check_inputs()
    others = [read_series(path) for path in compare]
    manager = task_manager(plan.include_path, tuple(plan.tasks)) if plan.tasks else None
    task_ids = {task: task_identity(task, manager) for task in plan.tasks}
    cache = ResultCache(out_dir)
    rows, task_reports = [], {}
    for tokens, export in exports:
        metrics, reports = evaluate_model(export, plan, cache, task_ids, manager)
        task_reports.update(reports)
        row = {"name": export.name, "tokens": tokens, **metrics}
        log.info(f"{export.name}: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
        rows.append(row)
    series = {"label": label or series_label(exports_dir), "exports": str(exports_dir.resolve()),
              **harness_record(plan, task_ids, task_reports), "rows": rows}
    write_tables(series, out_dir, others)
    return rows


def harness_record(plan: EvalPlan, task_ids: dict, task_reports: dict) -> dict:
    """How the numbers were made: lm-eval version, device and dtype, settings, and per task its
    identity (YAML sha256) and the configs, versions and shot counts the harness reported."""
    import lm_eval

    from .lm_eval_adapter import eval_device

    device, dtype = eval_device()
    return {"lm_eval_version": lm_eval.__version__, "device": device, "dtype": str(dtype),
            "num_fewshot": plan.num_fewshot, "limit": plan.limit, "batch_size": plan.batch_size,
            "heldout": {name: path for name, _, path in heldout_sources(plan.text_files, plan.data_prefixes)},
            "tasks": {task: {"identity": task_ids[task],
                             **{k: task_reports.get(task, {}).get(k) for k in ("configs", "versions", "n_shot")}}
                      for task in plan.tasks}}


def series_label(exports_dir: Path) -> str:
    """A run's name for legends: the exports directory's, or its parent's for a bare `exports`."""
    path = exports_dir.resolve()
    return path.parent.name if path.name in ("exports", "eval") else path.name


def read_series(path: str | Path) -> dict:
    """A series written by eval-series: SERIES_DIR/series.json, EXPORTS/eval/series.json or the file."""
    path = Path(path)
    for candidate in (path, path / SERIES_FILE, path / "eval" / SERIES_FILE):
        if candidate.is_file():
            series = read_json_file(candidate)
            if not isinstance(series.get("rows"), list):
                raise UserError("not a series written by eval-series", file=candidate, field="rows")
            series.setdefault("label", series_label(candidate.parent))
            return series
    raise UserError("no series.json found", file=path, field="--compare",
                    expected="an eval-series output directory")


# ----------------------------------------------------------------------------- reports

def metric_names(rows: list[dict]) -> list[str]:
    names = []
    for row in rows:
        names += [k for k, v in row.items() if isinstance(v, float) and k not in names]
    return names


def write_tables(series: dict, out_dir: Path, others=()) -> None:
    rows = series["rows"]
    out_dir.mkdir(parents=True, exist_ok=True)
    columns = ["name", "tokens"] + metric_names(rows)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out_dir / "series.csv", buf.getvalue())
    atomic_write_json(out_dir / SERIES_FILE, series)
    md = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        md.append("| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |")
    atomic_write_text(out_dir / "series.md", "\n".join(md) + "\n")
    plot([series, *others], out_dir)
    tensorboard(rows, out_dir / "tensorboard")


def _fmt(value) -> str:
    return "" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def token_axis(all_series: list[dict]) -> tuple[str, int]:
    """Tokens in the unit the largest series is named in (B for Baichuan-sized runs)."""
    most = max((r["tokens"] for s in all_series for r in s["rows"]), default=1)
    unit, scale = series_unit(max(most, 1))
    return (f"tokens ({unit})" if unit else "tokens"), scale


def set_token_scale(ax, tokens: list[float]) -> None:
    """Log-spaced early checkpoints (steps 1, 2, 4, ...) spread out on a symlog axis, linear near
    zero so that the step-0 checkpoint stays on it."""
    positive = [t for t in tokens if t > 0]
    if positive and max(positive) / min(positive) > 50:
        ax.set_xscale("symlog", linthresh=min(positive))


def plot(all_series: list[dict], out_dir: Path) -> dict[str, dict[str, list]]:
    """One PNG per metric (every series on the same axes), and the Baichuan-2-style chart:
    all benchmark metrics against tokens on one figure, one line style per series.
    Returns what was drawn: {png name: {line label: [(x, y), ...]}}."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xlabel, scale = token_axis(all_series)
    xs = [r["tokens"] / scale for series in all_series for r in series["rows"]]
    styles = ["-", "--", ":", "-."]
    drawn: dict[str, dict[str, list]] = {}
    for metric in metric_names(all_series[0]["rows"]):
        fig, ax = plt.subplots(figsize=(6, 4))
        name = f"plot_{metric.replace('/', '_')}.png"
        for i, series in enumerate(all_series):
            points = [(r["tokens"] / scale, r[metric]) for r in series["rows"] if metric in r]
            if points:
                ax.plot(*zip(*points), styles[i % len(styles)], marker="o", label=series["label"])
                drawn.setdefault(name, {})[series["label"]] = points
        ax.set(xlabel=xlabel, ylabel=metric, title=metric)
        set_token_scale(ax, xs)
        if metric.startswith("ppl/"):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        if len(all_series) > 1:
            ax.legend()
        _save(fig, out_dir / name)
    benchmarks = [m for m in metric_names(all_series[0]["rows"]) if not m.startswith("ppl/")]
    if benchmarks:
        fig, ax = plt.subplots(figsize=(10, 5))
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for j, metric in enumerate(benchmarks):
            for i, series in enumerate(all_series):
                points = [(r["tokens"] / scale, r[metric]) for r in series["rows"] if metric in r]
                if points:
                    label = metric if len(all_series) == 1 else f"{metric} ({series['label']})"
                    ax.plot(*zip(*points), styles[i % len(styles)], marker="o", color=colors[j % len(colors)],
                            label=label)
                    drawn.setdefault("benchmarks.png", {})[label] = points
        ax.set(xlabel=xlabel, ylabel="score", title="benchmarks against tokens")
        set_token_scale(ax, xs)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
        _save(fig, out_dir / "benchmarks.png")
    return drawn


def tensorboard(rows: list[dict], tb_dir: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tb_dir))
    for row in rows:
        for metric in metric_names([row]):
            writer.add_scalar(f"series/{metric}", row[metric], global_step=row["tokens"])
    writer.close()
