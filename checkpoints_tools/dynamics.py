"""`dynamics EXPORTS`: how the weights moved over a checkpoint series.

Reads the exports in token order, one tensor at a time through safetensors' `safe_open` (and
within a tensor, a block of rows at a time), so memory stays near one block of one tensor
(two when comparing with the previous checkpoint) plus the open shards' headers, whatever the
model size. Writes a table (dynamics.csv: one row per export and tensor; dynamics.json: that and
the per-export summary) and PNGs of:
- per-layer weight norms (Frobenius) per module;
- relative change ||W_t - W_prev|| / ||W_prev|| between consecutive checkpoints;
- NormHead row-norm statistics of lm_head (raw rows: export-hf's normhead_row_norms sidecar, or
  lm_head itself for checkpoints that store it raw, as the released Baichuan 2 ones do);
- embedding row norms of frequent vs rare tokens (frequency from the training data's token
  counts when the encoded data is found, else from the SentencePiece piece scores);
- the train loss and max logit logged to TensorBoard at the checkpoints' iterations.
"""
from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from stack_common.atomic import atomic_path, atomic_write_json, atomic_write_text, read_json_file
from stack_common.errors import UserError
from stack_common.logging import get_logger

from .export import EXPORT_META, ROW_NORMS_FILE, ROW_NORMS_KEY
from .hf_io import WeightFiles
from .series import list_exports, series_unit, set_token_scale

log = get_logger("checkpoints_tools.dynamics")

BLOCK_ROWS = 2048   # 32 MiB of fp32 for a 4096-wide row block
EMBED = "model.embed_tokens.weight"
HEAD = "lm_head.weight"
LAYER_NAME = re.compile(r"model\.layers\.(\d+)\.(.+)\.weight$")
DECILE = 0.1


# ----------------------------------------------------------------------------- streamed reading

class SafetensorsModel(WeightFiles):
    """An export's tensors read a block of rows at a time (safetensors get_slice, or the
    memory-mapped `.bin` shards of released checkpoints), one shard open at a time."""

    def __init__(self, model_dir: Path):
        super().__init__(model_dir, max_open=1)

    def _view(self, name: str):
        """(shape, an object sliced by rows without reading the rest)."""
        handle = self.handle_of(name)
        if hasattr(handle, "get_slice"):
            view = handle.get_slice(name)
            return list(view.get_shape()), view
        return list(handle[name].shape), handle[name]

    def shape(self, name: str) -> list[int]:
        return self._view(name)[0]

    def blocks(self, name: str, block_rows: int | None = None):
        """The tensor as fp32 blocks of rows (a 1-D tensor is one block)."""
        block_rows = block_rows or BLOCK_ROWS
        shape, view = self._view(name)
        if len(shape) == 1:
            yield view[:].float()
            return
        for start in range(0, shape[0], block_rows):
            yield view[start:start + block_rows].float()


def tensor_norm(model: SafetensorsModel, name: str) -> float:
    """Squares in fp32 (exact enough for bf16/fp32 weights), summed in fp64: no fp64 block copy."""
    return float(np.sqrt(sum(float(b.square().sum(dtype=torch.float64)) for b in model.blocks(name))))


def change_norm(model: SafetensorsModel, previous: SafetensorsModel, name: str) -> float:
    """||W - W_prev|| over the same blocks of rows of both checkpoints."""
    total = 0.0
    for a, b in zip(model.blocks(name), previous.blocks(name)):
        total += float((a - b).square_().sum(dtype=torch.float64))
    return float(np.sqrt(total))


def row_norms(model: SafetensorsModel, name: str) -> torch.Tensor:
    return torch.cat([b.norm(dim=-1) for b in model.blocks(name)])


def split_name(name: str) -> tuple[int | None, str]:
    """(layer, module): (3, "self_attn.W_pack") for model.layers.3.self_attn.W_pack.weight."""
    match = LAYER_NAME.match(name)
    if match:
        return int(match.group(1)), match.group(2)
    return None, name.removesuffix(".weight")


# ----------------------------------------------------------------------------- token frequency

@dataclass
class Frequency:
    source: str                      # "training data token counts (...)" or "tokenizer piece scores (...)"
    frequent: np.ndarray             # token ids of the most frequent decile of ordinary pieces
    rare: np.ndarray                 # token ids of the least frequent decile


def source_meta(model_dir: Path) -> dict:
    """The meta.json of the checkpoint an export came from (data paths, tokenizer), if still there."""
    if not (model_dir / EXPORT_META).is_file():
        return {}
    source = Path(str(read_json_file(model_dir / EXPORT_META).get("source") or ""))
    return read_json_file(source / "meta.json") if (source / "meta.json").is_file() else {}


def data_prefixes(meta: dict) -> list[str]:
    data = (meta.get("config") or {}).get("data") or {}
    paths = data.get("paths") or []
    prefixes = [str(p) for p in paths if isinstance(p, str)]
    return [p for p in prefixes if Path(p + ".bin").is_file() and Path(p + ".idx").is_file()]


def token_counts(prefixes: list[str], vocab_size: int, chunk: int = 1 << 22) -> np.ndarray:
    """How often each id occurs in the encoded datasets (read a chunk at a time)."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    counts = np.zeros(vocab_size, dtype=np.int64)
    for prefix in prefixes:
        dtype = IndexedDataset(prefix).index.dtype
        tokens = np.memmap(prefix + ".bin", dtype=dtype, mode="r")
        for start in range(0, len(tokens), chunk):
            ids = np.asarray(tokens[start:start + chunk], dtype=np.int64)
            counts += np.bincount(ids[ids < vocab_size], minlength=vocab_size)
    return counts


def ordinary_pieces(sp, vocab_size: int) -> np.ndarray:
    """Ids of text pieces: not control, unknown, unused or byte-fallback pieces."""
    return np.array([i for i in range(min(sp.get_piece_size(), vocab_size))
                     if not (sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i) or sp.is_byte(i))])


def token_frequency(model_dir: Path, vocab_size: int, data: list[str] | None = None) -> Frequency | None:
    """Frequent and rare deciles of the ordinary pieces: by the training data's token counts when
    the encoded data is found (--data, else the run's data.paths), else by the SentencePiece
    scores (BPE: earlier merges, i.e. higher scores, are more frequent pairs)."""
    import sentencepiece as spm

    model_file = model_dir / "tokenizer.model"
    if not model_file.is_file():
        return None
    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    ids = ordinary_pieces(sp, vocab_size)
    prefixes = list(data) if data else data_prefixes(source_meta(model_dir))
    if prefixes:
        weight = token_counts(prefixes, vocab_size)[ids].astype(np.float64)
        source = f"training data token counts ({', '.join(Path(p).name for p in prefixes)})"
    else:
        weight = np.array([sp.get_score(int(i)) for i in ids], dtype=np.float64)
        source = "tokenizer piece scores (no training data found)"
    order = ids[np.argsort(-weight, kind="stable")]
    k = max(1, int(len(order) * DECILE))
    return Frequency(source=source, frequent=np.sort(order[:k]), rare=np.sort(order[-k:]))


# ----------------------------------------------------------------------------- TensorBoard

def tensorboard_dir(model_dir: Path) -> Path | None:
    """RUN/tensorboard of the run an export came from (export_meta.json source = RUN/checkpoints/iter_N)."""
    if not (model_dir / EXPORT_META).is_file():
        return None
    source = Path(str(read_json_file(model_dir / EXPORT_META).get("source") or ""))
    candidate = source.parent.parent / "tensorboard"
    return candidate if candidate.is_dir() else None


def scalars_at(tb_dir: Path, tags: list[str], steps: list[int]) -> dict[str, list[float | None]]:
    """Each tag's value at each step: the last value logged at or before it (None if none)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    acc.Reload()
    out = {}
    for tag in tags:
        events = sorted((e.step, e.value) for e in acc.Scalars(tag)) if tag in acc.Tags()["scalars"] else []
        out[tag] = [next((v for s, v in reversed(events) if s <= step), None) for step in steps]
    return out


# ----------------------------------------------------------------------------- the report

@dataclass
class Report:
    exports: list = field(default_factory=list)     # one summary per export
    tensors: list = field(default_factory=list)     # one row per export and tensor
    frequency_source: str | None = None
    tensorboard: str | None = None


def export_summary(model: SafetensorsModel, freq: Frequency | None) -> dict:
    """NormHead row-norm statistics and embedding norms of frequent vs rare tokens."""
    summary = {}
    sidecar = model.dir / ROW_NORMS_FILE
    if sidecar.is_file():
        from safetensors import safe_open

        with safe_open(str(sidecar), framework="pt") as handle:
            norms, where = handle.get_tensor(ROW_NORMS_KEY).float(), ROW_NORMS_FILE
    elif HEAD in model.weight_map:
        norms, where = row_norms(model, HEAD), HEAD
    else:
        norms, where = None, None
    if norms is not None:
        summary.update({"head_rows_from": where, "head_row_norm_mean": norms.mean().item(),
                        "head_row_norm_std": norms.std().item(), "head_row_norm_min": norms.min().item(),
                        "head_row_norm_max": norms.max().item()})
    if EMBED in model.weight_map and freq is not None:
        embed = row_norms(model, EMBED)
        summary.update({"embed_norm_frequent": embed[torch.from_numpy(freq.frequent)].mean().item(),
                        "embed_norm_rare": embed[torch.from_numpy(freq.rare)].mean().item(),
                        "embed_norm_all": embed.mean().item()})
        if norms is not None:
            summary.update({"head_row_norm_frequent": norms[torch.from_numpy(freq.frequent)].mean().item(),
                            "head_row_norm_rare": norms[torch.from_numpy(freq.rare)].mean().item()})
    return summary


def training_dynamics(exports_dir: str | Path, out_dir: str | Path | None = None,
                      tb_dir: str | Path | None = None, data: list[str] | None = None) -> Report:
    exports_dir = Path(exports_dir)
    out_dir = Path(out_dir) if out_dir else exports_dir / "dynamics"
    exports = list_exports(exports_dir)
    report = Report()
    first = SafetensorsModel(exports[0][1])
    vocab = first.shape(EMBED)[0] if EMBED in first.weight_map else 0
    freq = token_frequency(exports[-1][1], vocab, data) if vocab else None
    report.frequency_source = freq.source if freq else None
    previous: SafetensorsModel | None = None
    previous_norms: dict[str, float] = {}
    for tokens, export in exports:
        model = SafetensorsModel(export)
        iteration = (read_json_file(export / EXPORT_META).get("iteration")
                     if (export / EXPORT_META).is_file() else None)
        norms = {}
        for name in model.names():
            layer, module = split_name(name)
            norm = norms[name] = tensor_norm(model, name)
            change = None
            if previous_norms.get(name) and previous.shape(name) == model.shape(name):
                change = change_norm(model, previous, name) / previous_norms[name]
            report.tensors.append({"export": export.name, "tokens": tokens, "iteration": iteration,
                                   "tensor": name, "layer": layer, "module": module, "norm": norm,
                                   "relative_change": change})
        report.exports.append({"export": export.name, "tokens": tokens, "iteration": iteration,
                               **export_summary(model, freq)})
        log.info(f"{export.name}: {len(model.names())} tensors")
        previous, previous_norms = model, norms
    add_tensorboard(report, Path(tb_dir) if tb_dir else tensorboard_dir(exports[-1][1]))
    write_report(report, out_dir)
    return report


def add_tensorboard(report: Report, tb_dir: Path | None) -> None:
    if tb_dir is None:
        log.warning("no TensorBoard directory found (pass --tensorboard RUN/tensorboard): no loss curve")
        return
    if not tb_dir.is_dir():
        raise UserError("TensorBoard directory does not exist", file=tb_dir, field="--tensorboard")
    steps = [int(e["iteration"] or 0) for e in report.exports]
    values = scalars_at(tb_dir, ["train/lm_loss", "train/max_logit"], steps)
    for summary, loss, logit in zip(report.exports, values["train/lm_loss"], values["train/max_logit"]):
        summary.update({"train_loss": loss, "max_logit": logit})
    report.tensorboard = str(tb_dir)


def write_report(report: Report, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    columns = ["export", "tokens", "iteration", "tensor", "layer", "module", "norm", "relative_change"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(report.tensors)
    atomic_write_text(out_dir / "dynamics.csv", buf.getvalue())
    summary_columns = list(dict.fromkeys(k for e in report.exports for k in e))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=summary_columns)
    writer.writeheader()
    writer.writerows(report.exports)
    atomic_write_text(out_dir / "summary.csv", buf.getvalue())
    atomic_write_json(out_dir / "dynamics.json", {
        "frequency_source": report.frequency_source, "tensorboard": report.tensorboard,
        "frequent_rare_split": f"top and bottom {DECILE:.0%} of ordinary pieces",
        "exports": report.exports, "tensors": report.tensors})
    plot_report(report, out_dir)


# ----------------------------------------------------------------------------- plots

def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)


def _layer_modules(report: Report) -> list[str]:
    return sorted({r["module"] for r in report.tensors if r["layer"] is not None})


def plot_report(report: Report, out_dir: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")

    unit, scale = series_unit(max(max(e["tokens"] for e in report.exports), 1))
    xlabel = f"tokens ({unit})" if unit else "tokens"
    plot_per_layer(report, "norm", "weight norm", out_dir / "weight_norms.png", xlabel, scale)
    if any(r["relative_change"] is not None for r in report.tensors):
        plot_per_layer(report, "relative_change", "relative change from the previous checkpoint",
                       out_dir / "relative_change.png", xlabel, scale)
    plot_summary(report, out_dir, xlabel, scale)


def plot_per_layer(report: Report, key: str, title: str, path: Path, xlabel: str, scale: int) -> None:
    """One panel per module, one line per layer (colour from first to last layer)."""
    import matplotlib.pyplot as plt

    modules = _layer_modules(report)
    layers = sorted({r["layer"] for r in report.tensors if r["layer"] is not None})
    cols = min(3, max(len(modules), 1))
    rows = (len(modules) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    cmap = plt.get_cmap("viridis")
    for ax, module in zip(axes.flat, modules):
        for layer in layers:
            points = [(r["tokens"] / scale, r[key]) for r in report.tensors
                      if r["module"] == module and r["layer"] == layer and r[key] is not None]
            if points:
                ax.plot(*zip(*points), marker=".", color=cmap(layer / max(len(layers) - 1, 1)),
                        label=f"layer {layer}")
        ax.set_title(module, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        set_token_scale(ax, [r["tokens"] / scale for r in report.tensors])
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(modules):]:
        ax.axis("off")
    if layers:
        axes.flat[0].legend(fontsize=6)
    fig.suptitle(title)
    _save(fig, path)


def plot_summary(report: Report, out_dir: Path, xlabel: str, scale: int) -> None:
    import matplotlib.pyplot as plt

    x = [e["tokens"] / scale for e in report.exports]

    def series(key):
        return [e.get(key) for e in report.exports]

    if any(v is not None for v in series("head_row_norm_mean")):
        fig, ax = plt.subplots(figsize=(6, 4))
        mean, std = np.array(series("head_row_norm_mean")), np.array(series("head_row_norm_std"))
        ax.plot(x, mean, marker="o", label="mean")
        ax.fill_between(x, mean - std, mean + std, alpha=0.2, label="± std")
        ax.plot(x, series("head_row_norm_min"), "--", label="min")
        ax.plot(x, series("head_row_norm_max"), "--", label="max")
        ax.set(xlabel=xlabel, ylabel="L2 norm of an lm_head row", title="NormHead: raw output row norms")
        set_token_scale(ax, x)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        _save(fig, out_dir / "normhead_row_norms.png")
    if any(v is not None for v in series("embed_norm_frequent")):
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(x, series("embed_norm_frequent"), marker="o", label="frequent tokens (top 10%)")
        ax.plot(x, series("embed_norm_rare"), marker="o", label="rare tokens (bottom 10%)")
        ax.plot(x, series("embed_norm_all"), ":", label="all tokens")
        ax.set(xlabel=xlabel, ylabel="mean embedding row norm", title="embedding norms by token frequency")
        set_token_scale(ax, x)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, title=report.frequency_source, title_fontsize=6, loc="upper left")
        _save(fig, out_dir / "embedding_norms.png")
    if any(v is not None for v in series("train_loss")):
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(x, series("train_loss"), marker="o", color="C0")
        ax.set(xlabel=xlabel, title="train loss and max logit at the checkpoints")
        set_token_scale(ax, x)
        ax.set_ylabel("train lm loss", color="C0")
        twin = ax.twinx()
        twin.plot(x, series("max_logit"), marker="s", color="C3")
        twin.set_ylabel("max logit", color="C3")
        ax.grid(alpha=0.3)
        _save(fig, out_dir / "train_loss_max_logit.png")


def format_summary(report: Report) -> str:
    keys = ["export", "tokens", "train_loss", "max_logit", "head_row_norm_mean", "embed_norm_frequent",
            "embed_norm_rare"]
    lines = ["\t".join(keys)]
    for e in report.exports:
        lines.append("\t".join("" if e.get(k) is None else f"{e[k]:.4g}" if isinstance(e[k], float)
                               else str(e[k]) for k in keys))
    if report.frequency_source:
        lines.append(f"token frequency: {report.frequency_source}")
    return "\n".join(lines)

