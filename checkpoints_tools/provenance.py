"""Data provenance of a run, from megatron-core's dataset indices, without training.

The trainer reads the blended train dataset in one fixed order (pretrain/data.py): step N (1-based)
takes global samples [(N-1)*G, N*G); micro-batch k of data-parallel rank r takes the `mbs`
samples from (N-1)*G + k*mbs*dp + r*mbs. A sample of the blend is (dataset, sample of that
dataset) by the BlendedDataset's dataset_index / dataset_sample_index; a GPTDataset sample is
found through its shuffle_index, then sample_index gives its first and last position in the
document_index (with token offsets), and document_index gives the documents. The datasets are
built with the trainer's own functions from the run's config, so they load the index files the
trainer built (RUN/data_cache) or, when those are gone, build the same ones again.

    batches RUN --step N   the documents (dataset, index, token range, id/source/lang from the
                           encode's sidecar) of every micro-batch of step N
    seen RUN --step N      tokens the model was fed up to step N, per dataset, source and language
"""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

import numpy as np

from stack_common.atomic import read_json_file
from stack_common.errors import UserError
from stack_common.logging import get_logger

log = get_logger("checkpoints_tools.provenance")

UNKNOWN = "(unknown)"
NAME_COLUMNS = ("id", "source", "lang")


@dataclass
class RunData:
    """The train dataset of a run as the trainer built it, and how steps cut it."""
    run: object                 # pretrain.config.RunConfig (data, training, seq_length, run_dir)
    train: object               # BlendedDataset, or GPTDataset for a lone unweighted path
    dp: int

    @property
    def global_batch(self) -> int:
        return self.run.training.global_batch_size

    @property
    def micro_batch(self) -> int:
        return self.run.training.micro_batch_size

    @property
    def datasets(self) -> list:
        return list(getattr(self.train, "datasets", [self.train]))


# ----------------------------------------------------------------------------- the run's data

def checkpoint_rows(run_dir: Path) -> list[tuple[int, Path, dict]]:
    """(iteration, dir, meta.json) of the run's complete checkpoints, by iteration."""
    from pretrain.checkpointing import checkpoints_root, is_complete

    rows = []
    for d in sorted(checkpoints_root(run_dir).glob("iter_*")):
        if is_complete(d):
            meta = read_json_file(d / "meta.json")
            rows.append((int(meta.get("iteration", -1)), d, meta))
    return rows


def config_for_step(run_dir: Path, step: int) -> tuple[dict, int, str]:
    """(resolved config, data-parallel size, where from) of the run that trained `step`: the first
    checkpoint at or after it, else the latest, else RUN/config.yaml (dp 1)."""
    rows = [r for r in checkpoint_rows(run_dir) if isinstance(r[2].get("config"), dict)]
    if rows:
        after = [r for r in rows if r[0] >= step]
        _, ckpt, meta = after[0] if after else rows[-1]
        return meta["config"], int(meta.get("dp") or 1), str(ckpt / "meta.json")
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise UserError("no checkpoint with a recorded config and no config.yaml", file=run_dir,
                        expected="a run directory of python -m pretrain")
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(path), resolve=True), 1, str(path)


def run_config(config: dict, run_dir: Path):
    """The parts of a RunConfig that the data depends on, with the checkpoint dir set to
    `run_dir` (so the run's data_cache is used wherever the run directory now is)."""
    from pretrain.config import (CheckpointConfig, DataConfig, FaultDrillConfig, RunConfig, TrainingConfig,
                                 split_recorded_training)
    from stack_common.config import to_dataclass

    for group in ("data", "training", "checkpoint", "model"):
        if not isinstance(config.get(group), dict):
            raise UserError("run config has no such group", field=group, expected="a config of python -m pretrain")
    checkpoint = to_dataclass(dict(config["checkpoint"], dir=str(run_dir)), CheckpointConfig, where="checkpoint")
    training, faults = split_recorded_training(config["training"])
    faults.update(config.get("faults") or {})
    return RunConfig(optimizer=None, training=to_dataclass(training, TrainingConfig, where="training"),
                     data=to_dataclass(config["data"], DataConfig, where="data"), checkpoint=checkpoint,
                     logging=None, faults=to_dataclass(faults, FaultDrillConfig, where="faults"),
                     model=SimpleNamespace(**config["model"]), parallel=None, resolved=config)


def load_run_data(run_dir: str | Path, step: int, dp: Optional[int] = None,
                  config: Optional[dict] = None) -> RunData:
    """The train dataset the run used at `step` (from its recorded config unless `config`)."""
    from pretrain.data import build_datasets, strip_ext

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError("run directory does not exist", file=run_dir)
    recorded_dp = 1
    if config is None:
        config, recorded_dp, where = config_for_step(run_dir, step)
        log.info(f"data config of step {step} from {where}")
    run = run_config(config, run_dir)
    for i, path in enumerate(run.data.paths):
        for ext in (".bin", ".idx"):
            if not Path(strip_ext(path) + ext).is_file():
                raise UserError("data file of the run does not exist (run from the directory the run was "
                                "started in, or restore the file)", file=strip_ext(path) + ext,
                                field=f"data.paths[{i}]")
    with lone_process_group():
        train, _ = build_datasets(run)
    return RunData(run=run, train=train, dp=dp or recorded_dp)


@contextlib.contextmanager
def lone_process_group():
    """megatron-core's BlendedDataset asks for the rank when it must (re)build its indices: give
    it a one-process gloo group (in memory) unless one exists."""
    import torch.distributed as dist

    if dist.is_initialized():
        yield
        return
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def blend(data: RunData) -> list[dict]:
    """The data blend as the trainer used it: dataset path prefix and normalized weight."""
    from pretrain.data import dataset_config

    prefixes, weights = dataset_config(data.run).blend
    total = float(sum(weights))
    return [{"dataset": p, "weight": float(w) / total} for p, w in zip(prefixes, weights)]


# ----------------------------------------------------------------------------- samples -> documents

def dataset_of_samples(data: RunData, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(dataset id, sample within that dataset) of global train samples."""
    train = data.train
    if hasattr(train, "dataset_index"):
        return (np.asarray(train.dataset_index[samples], dtype=np.int64),
                np.asarray(train.dataset_sample_index[samples], dtype=np.int64))
    return np.zeros(len(samples), dtype=np.int64), samples.astype(np.int64)


def sample_documents(ds, sample: int) -> list[dict]:
    """The pieces of one GPTDataset sample: document index in the .bin, token offset and count
    (seq_length + 1 tokens in all: the last one is only a label), as GPTDataset reads them."""
    extra = int(ds.config.add_extra_token_to_sequence)
    i = int(ds.shuffle_index[sample])
    (beg, beg_offset), (end, end_offset) = (tuple(map(int, ds.sample_index[j])) for j in (i, i + 1))
    lengths = ds.dataset.sequence_lengths
    pieces = []
    for pos in range(beg, end + 1):
        doc = int(ds.document_index[pos])
        offset = beg_offset if pos == beg else 0
        stop = end_offset + extra if pos == end else int(lengths[doc])
        pieces.append({"document": doc, "offset": offset, "tokens": stop - offset})
    return pieces


class DocNames:
    """id, source and lang of documents from each dataset's encode sidecar (None without one),
    read a row group at a time (the sidecar of a large corpus does not fit in memory)."""

    def __init__(self, datasets: list):
        from tokenizer_training.encode import open_docs

        self.files = [open_docs(ds.dataset.path_prefix, len(ds.dataset.sequence_lengths)) for ds in datasets]
        self.ends = [np.cumsum([f.metadata.row_group(i).num_rows for i in range(f.metadata.num_row_groups)])
                     if f is not None else None for f in self.files]
        self.groups: dict[tuple[int, int], object] = {}

    def names(self, dataset: int, document: int) -> dict:
        sidecar, ends = self.files[dataset], self.ends[dataset]
        if sidecar is None:
            return dict.fromkeys(NAME_COLUMNS)
        group = int(np.searchsorted(ends, document, side="right"))
        if (dataset, group) not in self.groups:
            self.groups[(dataset, group)] = sidecar.read_row_group(group)
        row = document - (int(ends[group - 1]) if group else 0)
        return {c: self.groups[(dataset, group)].column(c)[row].as_py() for c in NAME_COLUMNS}


def step_samples(data: RunData, step: int) -> range:
    if step < 1:
        raise UserError(f"step {step}: steps count from 1 (step N is the N-th optimizer update)",
                        field="--step")
    first = (step - 1) * data.global_batch
    if first + data.global_batch > len(data.train):
        raise UserError(f"step {step} needs samples up to {first + data.global_batch}, the run's train "
                        f"dataset has {len(data.train)}", field="--step",
                        expected=f"at most {len(data.train) // data.global_batch}")
    return range(first, first + data.global_batch)


def step_batches(data: RunData, step: int) -> dict:
    """Every micro-batch of `step`, in the trainer's order, with the documents of each sample."""
    g, mbs, dp = data.global_batch, data.micro_batch, data.dp
    if g % (mbs * dp):
        raise UserError(f"global batch {g} is not divisible by micro batch {mbs} x dp {dp}", field="--dp")
    samples = step_samples(data, step)
    ids, within = dataset_of_samples(data, np.asarray(samples))
    datasets, names = data.datasets, DocNames(data.datasets)
    micro_batches = []
    for k in range(g // (mbs * dp)):
        for r in range(dp):
            first = samples.start + k * mbs * dp + r * mbs
            rows = []
            for sample in range(first, first + mbs):
                d, s = int(ids[sample - samples.start]), int(within[sample - samples.start])
                docs = [dict(piece, **names.names(d, piece["document"]))
                        for piece in sample_documents(datasets[d], s)]
                rows.append({"sample": sample, "dataset": datasets[d].dataset.path_prefix,
                             "dataset_sample": s, "documents": docs})
            micro_batches.append({"dp_rank": r, "micro": k, "samples": rows})
    micro_batches.sort(key=lambda m: (m["dp_rank"], m["micro"]))
    return {"step": step, "samples": [samples.start, samples.stop], "global_batch_size": g,
            "micro_batch_size": mbs, "dp": dp, "seq_length": data.run.seq_length, "micro_batches": micro_batches}


# ----------------------------------------------------------------------------- tokens seen

def covered_tokens(starts: np.ndarray, width: int, bounds: np.ndarray) -> np.ndarray:
    """For ranges [s, s + width) (one per start, repeats counted), how many of their tokens fall
    in each [bounds[j], bounds[j + 1]). Vectorized: C(x) = tokens covered below x."""
    starts = np.sort(starts.astype(np.int64))
    prefix = np.concatenate([[0], np.cumsum(starts)])
    x = bounds.astype(np.int64)
    full = np.searchsorted(starts, x - width, side="right")      # ranges wholly below x
    begun = np.searchsorted(starts, x, side="left")               # ranges begun below x
    below = width * full + (begun - full) * x - (prefix[begun] - prefix[full])
    return np.diff(below)


def tokens_per_document(ds, samples: np.ndarray, width: int, window: int = 1 << 22) -> np.ndarray:
    """Tokens of each document of the .bin fed as model input (`width` = seq_length per sample).

    The document order is walked `window` positions at a time (its token offsets for a long run
    would not fit in memory at once); samples that began in an earlier window and reach into the
    current one are carried over."""
    lengths = np.asarray(ds.dataset.sequence_lengths, dtype=np.int64)
    per_doc = np.zeros(len(lengths), dtype=np.int64)
    if len(samples) == 0:
        return per_doc
    order = np.asarray(ds.shuffle_index[samples], dtype=np.int64)
    begin = np.asarray(ds.sample_index[order], dtype=np.int64)          # (position, offset) of each start
    begin = begin[np.argsort(begin[:, 0], kind="stable")]
    last = int(np.asarray(ds.sample_index[order + 1], dtype=np.int64)[:, 0].max())   # no sample reaches past it
    base, carry = 0, np.empty(0, dtype=np.int64)
    for lo in range(0, last + 1, window):
        docs = np.asarray(ds.document_index[lo: min(lo + window, last + 1)], dtype=np.int64)
        cum = base + np.concatenate([[0], np.cumsum(lengths[docs])])   # token offsets of these positions
        a, b = np.searchsorted(begin[:, 0], [lo, lo + len(docs)])
        starts = np.concatenate([carry, cum[begin[a:b, 0] - lo] + begin[a:b, 1]])
        np.add.at(per_doc, docs, covered_tokens(starts, width, cum))
        carry, base = starts[starts > cum[-1] - width], int(cum[-1])
    return per_doc


def samples_by_dataset(data: RunData, n: int, chunk: int = 1 << 24) -> list[np.ndarray]:
    """The samples (within each dataset) that the first `n` global samples are, per dataset."""
    parts: list[list[np.ndarray]] = [[] for _ in data.datasets]
    for lo in range(0, n, chunk):
        ids, within = dataset_of_samples(data, np.arange(lo, min(lo + chunk, n), dtype=np.int64))
        for d, part in enumerate(parts):
            part.append(within[ids == d])
    return [np.concatenate(p) if p else np.empty(0, dtype=np.int64) for p in parts]


def tokens_seen(data: RunData, step: int) -> dict:
    """Tokens fed as model input in steps 1..`step` (seq_length per sample; the extra label token
    of each sample is not counted, so the total is the trainer's consumed_tokens), per dataset,
    source, language and (source, language)."""
    n = step * data.global_batch
    if n > len(data.train):
        raise UserError(f"step {step} is beyond the run's train dataset ({len(data.train)} samples)",
                        field="--step")
    width = data.run.seq_length
    per_dataset, by = [], {"source": {}, "lang": {}, "source_lang": {}}
    for d, (ds, samples) in enumerate(zip(data.datasets, samples_by_dataset(data, n))):
        per_doc = tokens_per_document(ds, samples, width)
        per_dataset.append({"dataset": ds.dataset.path_prefix, "tokens": int(per_doc.sum()),
                            "documents_seen": int((per_doc > 0).sum()), "documents": len(per_doc),
                            "samples": len(samples)})
        for key, sums in tokens_by_label(ds, per_doc).items():
            for label, tokens in sums.items():
                by[key][label] = by[key].get(label, 0) + tokens
    return {"step": step, "samples": n, "tokens": int(sum(r["tokens"] for r in per_dataset)),
            "seq_length": width, "datasets": per_dataset,
            **{f"by_{k}": dict(sorted(v.items(), key=lambda kv: -kv[1])) for k, v in by.items()}}


def tokens_by_label(ds, per_doc: np.ndarray) -> dict[str, dict[str, int]]:
    """`per_doc` summed per source, language and "source/lang" of the documents, from the
    sidecar's dictionary codes (UNKNOWN without a sidecar, or where a value is missing)."""
    from tokenizer_training.encode import read_docs

    table = read_docs(ds.dataset.path_prefix, len(per_doc), columns=("source", "lang"))
    if table is None:
        total = int(per_doc.sum())
        return {key: {UNKNOWN: total} if total else {} for key in ("source", "lang", "source_lang")}
    (source, sources), (lang, langs) = (label_codes(table, c) for c in ("source", "lang"))
    pairs = source * len(langs) + lang
    pair_labels = [f"{s}/{l}" for s in sources for l in langs]
    return {key: summed(codes, labels, per_doc) for key, codes, labels in
            (("source", source, sources), ("lang", lang, langs), ("source_lang", pairs, pair_labels))}


def label_codes(table, column: str) -> tuple[np.ndarray, list[str]]:
    """A dictionary column as one code per document and the labels of the codes (nulls get the
    last code, labelled UNKNOWN)."""
    values = table.unify_dictionaries().column(column).combine_chunks()
    labels = [str(v) for v in values.dictionary.to_pylist()] + [UNKNOWN]
    codes = values.indices.fill_null(len(labels) - 1).to_numpy(zero_copy_only=False).astype(np.int64)
    return codes, labels


def summed(codes: np.ndarray, labels: list[str], values: np.ndarray) -> dict[str, int]:
    """`values` summed per label (labels with nothing left out; equal labels merged)."""
    out: dict[str, int] = {}
    for label, total in zip(labels, np.bincount(codes, weights=values, minlength=len(labels))):
        if total > 0:
            out[label] = out.get(label, 0) + int(total)
    return out


# ----------------------------------------------------------------------------- exports

def training_state(ckpt_dir: Path, meta: dict) -> dict:
    """What an export's training_state.json says of its moment: counters, LR, recent losses (meta.json
    `progress`), config hash, the checkpoint it came from, the data blend and tokens per source so
    far (null with `data_problem` when the run's data cannot be read)."""
    from pretrain.checkpointing import config_sha256

    config = meta.get("config") if isinstance(meta.get("config"), dict) else None
    progress = meta.get("progress") if isinstance(meta.get("progress"), dict) else {}
    state = {
        "checkpoint": str(Path(ckpt_dir).resolve()), "iteration": meta.get("iteration"),
        "consumed_tokens": meta.get("consumed_tokens"), "consumed_samples": meta.get("consumed_samples"),
        "lr": progress.get("lr"), "next_lr": progress.get("next_lr"),
        "train_lm_loss": progress.get("train_lm_loss"), "train_lm_loss_mean": progress.get("train_lm_loss_mean"),
        "train_lm_loss_recent": progress.get("train_lm_loss_recent"), "valid": progress.get("valid"),
        "config_sha256": meta.get("config_sha256") or (config_sha256(config) if config else None),
        "train_state": meta.get("train_state"), "layout": {k: meta.get(k) for k in ("tp", "pp", "vpp", "dp")},
        "data_blend": None, "tokens_seen": None,
    }
    if config is None:
        state["data_problem"] = "the checkpoint records no run config (e.g. written by import-hf)"
        return state
    try:
        data = load_run_data(run_dir_of(Path(ckpt_dir), config), int(meta.get("iteration") or 0),
                             config=config)
        state["data_blend"] = blend(data)
        state["tokens_seen"] = tokens_seen(data, int(meta.get("iteration") or 0))
    except UserError as err:
        state["data_problem"] = err.one_line()
        log.warning(f"training_state.json without data blend and tokens seen: {err.one_line()}")
    return state


def run_dir_of(ckpt_dir: Path, config: dict) -> Path:
    """RUN for RUN/checkpoints/iter_*, else the run directory the config names."""
    if ckpt_dir.resolve().parent.name == "checkpoints":
        return ckpt_dir.resolve().parent.parent
    return Path(config.get("checkpoint", {}).get("dir", "."))


# ----------------------------------------------------------------------------- text output

def format_batches(report: dict) -> str:
    lines = [f"step {report['step']}: samples {report['samples'][0]}..{report['samples'][1] - 1} "
             f"(global batch {report['global_batch_size']}, micro batch {report['micro_batch_size']}, "
             f"dp {report['dp']}, {report['seq_length'] + 1} tokens per sample incl. the last label)"]
    for mb in report["micro_batches"]:
        lines.append(f"dp{mb['dp_rank']} micro{mb['micro']}:")
        for s in mb["samples"]:
            lines.append(f"  sample {s['sample']} = {Path(s['dataset']).name}[{s['dataset_sample']}]")
            for d in s["documents"]:
                named = " ".join(f"{k}={d[k]}" for k in ("id", "source", "lang") if d.get(k) is not None)
                lines.append(f"    doc {d['document']} tokens [{d['offset']}:{d['offset'] + d['tokens']}] {named}".rstrip())
    return "\n".join(lines)


def format_seen(report: dict) -> str:
    total = max(report["tokens"], 1)
    lines = [f"up to step {report['step']}: {report['tokens']:,} tokens in {report['samples']:,} samples "
             f"(seq_length {report['seq_length']})", "", "dataset  tokens  share  documents seen"]
    for r in report["datasets"]:
        lines.append(f"{Path(r['dataset']).name}  {r['tokens']:,}  {r['tokens'] / total:.1%}  "
                     f"{r['documents_seen']:,}/{r['documents']:,}")
    for key in ("by_source", "by_lang"):
        lines += ["", f"{key[3:]}  tokens  share"]
        lines += [f"{k}  {v:,}  {v / total:.1%}" for k, v in report[key].items()]
    return "\n".join(lines)


def to_json(report: dict) -> str:
    return json.dumps(report, indent=1, default=str)
