"""Training data: megatron-core GPTDataset blended by BlendedMegatronDatasetBuilder, read in a
deterministic order that continues exactly from `consumed_samples` after a resume.

Sample order: the blended train dataset is one fixed sequence of samples (shuffled with
training.data_seed when the indices are built). Iteration i consumes samples [i*G, (i+1)*G) for a global batch
G; inside it, microbatch k of data-parallel rank r takes mbs contiguous samples at
i*G + k*mbs*dp + r*mbs. Everything a resume needs is therefore the one integer consumed_samples.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional

import torch

from stack_common.atomic import read_json_file, sha256_file
from stack_common.logging import get_logger

if TYPE_CHECKING:   # the config layer imports this module, not the reverse
    from pretrain.config import DataConfig, RunConfig

log = get_logger("pretrain.data")


# ----------------------------------------------------------------------------- files of the data

def resolve_summary(data: DataConfig, path: Optional[str] = None) -> Optional[Path]:
    """The encode_summary.json describing `path` (default: the first data path)."""
    if data.summary:
        return Path(data.summary)
    path = path or (data.paths[0] if data.paths else None)
    return Path(strip_ext(path)).parent / "encode_summary.json" if path else None


def strip_ext(path: str) -> str:
    for ext in (".bin", ".idx"):
        if path.endswith(ext):
            return path[: -len(ext)]
    return path


def tokenizer_vocab_size(data: DataConfig) -> Optional[int]:
    """The vocabulary the data was encoded with: from config, else encode_summary.json."""
    if data.tokenizer.vocab_size:
        return data.tokenizer.vocab_size
    summary = resolve_summary(data)
    if summary is not None and summary.is_file():
        info = read_json_file(summary)
        for key in ("vocab_size", "tokenizer_vocab_size"):
            if key in info:
                return int(info[key])
        if isinstance(info.get("tokenizer"), dict) and "vocab_size" in info["tokenizer"]:
            return int(info["tokenizer"]["vocab_size"])
    return None


def split_string(split: list[float]) -> str:
    """megatron's form of the split: '98,2,0'."""
    return ",".join(f"{x:g}" for x in split)


# ----------------------------------------------------------------------------- datasets



class EncodedDataTokenizer:
    """What megatron's GPT datasets need to know of the tokenizer: vocabulary size and EOD id.

    The data is already encoded; this stands in for a MegatronTokenizer without loading one."""

    def __init__(self, vocab_size: int, eod_id: int):
        self.vocab_size = int(vocab_size)
        self.eod = int(eod_id)

    @property
    def unique_identifiers(self) -> OrderedDict:
        return OrderedDict(vocab_size=self.vocab_size, eod=self.eod)


def dataset_config(run: RunConfig):
    from megatron.core.datasets.gpt_dataset import GPTDatasetConfig

    d = run.data
    prefixes = [str(Path(strip_ext(p)).resolve()) for p in d.paths]
    weights = [float(w) for w in d.weights] if d.weights is not None else token_counts(prefixes)
    cache = d.cache_dir or str(run.run_dir / "data_cache")
    return GPTDatasetConfig(
        random_seed=run.data_seed,
        sequence_length=run.seq_length,
        blend=(prefixes, weights),
        split=split_string(d.split),
        path_to_cache=cache,
        tokenizer=EncodedDataTokenizer(tokenizer_vocab_size(d), d.tokenizer.eod_id),
        reset_position_ids=d.reset_position_ids,
        reset_attention_mask=d.reset_attention_mask,
        eod_mask_loss=d.eod_mask_loss,
        create_attention_mask=d.reset_attention_mask,   # [1, s, s], True where attention is cut
        mid_level_dataset_surplus=0.05,
    )


def token_counts(prefixes: list[str]) -> list[float]:
    """Default blend weights: each dataset in proportion to its tokens.

    Explicit weights (even these) make megatron build as many epochs as the run needs."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    counts = []
    for prefix in prefixes:
        dataset = IndexedDataset(prefix)      # keep it alive: sequence_lengths maps its index file
        counts.append(float(dataset.sequence_lengths.sum()))
        del dataset
    return counts


def split_problems(paths: list[str], split: list[float], seq_length: int, need_valid: bool) -> list[str]:
    """Datasets whose train (or, when evaluating, valid) share would hold less than one sample;
    megatron would loop forever trying to fill it."""
    from megatron.core.datasets.blended_megatron_dataset_config import (
        convert_split_vector_to_split_matrix, parse_and_normalize_split)
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    matrix = convert_split_vector_to_split_matrix(parse_and_normalize_split(split_string(split)))
    problems = []
    for i, path in enumerate(paths):
        dataset = IndexedDataset(strip_ext(path))
        lengths = dataset.sequence_lengths
        n = len(lengths)
        for which, name in ((0, "train"), (1, "valid")):
            if matrix[which] is None or (which == 1 and not need_valid):
                continue
            beg, end = (int(round(x * float(n))) for x in matrix[which])
            tokens = int(lengths[beg:end].sum())
            if tokens <= seq_length:
                problems.append(f"data.paths[{i}]: {path} has {n} documents; data.split={split} leaves "
                                f"{end - beg} documents ({tokens} tokens) for {name}, less than one "
                                f"sequence of {seq_length + 1} tokens")
        del dataset
    return problems


def sample_counts(run: RunConfig) -> list[int]:
    """Samples to build per split: all training steps, and one fixed validation set."""
    t = run.training
    valid = t.eval_iters * t.global_batch_size if t.eval_interval > 0 else 0
    return [t.train_iters * t.global_batch_size, valid, 0]


def build_datasets(run: RunConfig):
    """(train, valid) blended datasets; every rank calls this (rank 0 builds the index cache first)."""
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset

    counts = sample_counts(run)
    builder = BlendedMegatronDatasetBuilder(GPTDataset, counts, lambda: True, dataset_config(run))
    train, valid, _ = builder.build()
    log.info(f"train samples {len(train):,} (need {counts[0]:,}), valid samples "
             f"{len(valid) if valid is not None else 0:,}")
    return train, valid


def collate(samples: list[dict]) -> dict:
    return {key: torch.stack([torch.as_tensor(s[key]) for s in samples]) for key in samples[0]}


class RankSamples(torch.utils.data.Sampler):
    """The sample indices of one data-parallel rank from `start` on, in the order described
    above (mbs consecutive indices per microbatch)."""

    def __init__(self, start: int, end: int, micro_batch_size: int, dp_rank: int, dp_size: int):
        self.start, self.end, self.mbs, self.dp_rank, self.dp_size = start, end, micro_batch_size, dp_rank, dp_size

    def _positions(self) -> range:
        step = self.mbs * self.dp_size
        return range(self.start, self.end - step + 1, step)

    def __iter__(self):
        for pos in self._positions():
            begin = pos + self.dp_rank * self.mbs
            yield from range(begin, begin + self.mbs)

    def __len__(self) -> int:
        return len(self._positions()) * self.mbs


def microbatches(dataset, start_sample: int, micro_batch_size: int, dp_rank: int, dp_size: int,
                 end_sample: Optional[int] = None, num_workers: int = 0,
                 pin_memory: bool = False) -> Iterator[dict]:
    """This rank's microbatches from `start_sample` on, in the order described above, read by
    `num_workers` DataLoader processes ahead of the step (0: in the training process) into
    pinned memory when asked (faster copies to the GPU)."""
    end = len(dataset) if end_sample is None else min(end_sample, len(dataset))
    sampler = RankSamples(start_sample, end, micro_batch_size, dp_rank, dp_size)
    loader = torch.utils.data.DataLoader(dataset, batch_size=micro_batch_size, sampler=sampler,
                                         num_workers=num_workers, pin_memory=pin_memory, collate_fn=collate)
    return iter(loader)


def loader_settings(run: RunConfig) -> dict:
    """data.num_workers (None: 2 on GPU, 0 on CPU) and pinned memory on GPU."""
    cuda = torch.cuda.is_available()
    workers = run.data.num_workers if run.data.num_workers is not None else (2 if cuda else 0)
    return {"num_workers": workers, "pin_memory": cuda}


def microbatch_sha256(batch: dict) -> str:
    """Digest of what a micro-batch feeds the model: per sample, its tokens then its labels, as
    int64 little-endian bytes (the provenance drill compares it with the .bin files)."""
    import hashlib

    import numpy as np

    digest = hashlib.sha256()
    tokens, labels = (np.asarray(batch[k], dtype="<i8") for k in ("tokens", "labels"))
    for row_tokens, row_labels in zip(tokens, labels):
        digest.update(row_tokens.tobytes())
        digest.update(row_labels.tobytes())
    return digest.hexdigest()


def valid_microbatches(dataset, run: RunConfig, dp_rank: int, dp_size: int) -> Iterator[dict]:
    """The fixed validation set (same samples every evaluation, so losses compare). Read in this
    process: worker processes started anew at every evaluation cost more than the few batches."""
    t = run.training
    return microbatches(dataset, 0, t.micro_batch_size, dp_rank, dp_size,
                        end_sample=t.eval_iters * t.global_batch_size,
                        **dict(loader_settings(run), num_workers=0))


def tokenizer_reference(run: RunConfig) -> dict:
    """Tokenizer path + sha256 for checkpoints: from data.tokenizer.model or encode_summary.json."""
    d = run.data
    ref = {"model": d.tokenizer.model, "sha256": None, "vocab_size": tokenizer_vocab_size(d),
           "eod_id": d.tokenizer.eod_id, "encode_summary": None}
    summary = resolve_summary(d)
    if summary is not None and summary.is_file():
        ref["encode_summary"] = str(summary.resolve())
        model, ref["sha256"] = summary_tokenizer(summary)
        ref["model"] = ref["model"] or model
    if ref["model"] and Path(ref["model"]).is_file():
        ref["model"] = str(Path(ref["model"]).resolve())
        ref["sha256"] = sha256_file(ref["model"])
    return ref


def summary_tokenizer(summary: Path) -> tuple[str | None, str | None]:
    """(tokenizer model path, sha256) an encode_summary.json records; the sha256 from the model
    file when the summary has none and the file is there."""
    info = read_json_file(summary)
    tok = info.get("tokenizer") if isinstance(info.get("tokenizer"), dict) else {}
    model = tok.get("model") or info.get("tokenizer_model") \
        or (info.get("tokenizer") if isinstance(info.get("tokenizer"), str) else None)
    sha = tok.get("sha256") or info.get("tokenizer_sha256")
    if not sha and model and Path(model).is_file():
        sha = sha256_file(model)
    return model, sha


def write_token_dataset(prefix: str | Path, documents, vocab_size: int) -> Path:
    """Write token-id documents as a megatron indexed dataset `prefix.{bin,idx}` (atomically).

    For synthetic data, drills and tests; real corpora come from `tokenizer_training encode`."""
    import numpy as np
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    from stack_common.atomic import atomic_path

    prefix = Path(prefix)
    dtype = np.uint16 if vocab_size <= 65536 else np.int32
    with atomic_path(prefix.with_name(prefix.name + ".bin")) as bin_tmp, \
            atomic_path(prefix.with_name(prefix.name + ".idx")) as idx_tmp:
        builder = IndexedDatasetBuilder(str(bin_tmp), dtype=dtype)
        for doc in documents:
            builder.add_document(np.asarray(doc, dtype=dtype), [len(doc)])
        builder.finalize(str(idx_tmp))
    return prefix
