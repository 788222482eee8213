"""Structured configs of a pretraining run and the whole-config validation done before any
process group starts. The groups `model` and `parallel` belong to the model layer
(`pretrain.model.ModelConfig`, `configs/parallel/`); the rest is defined here."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig

from pretrain.data import resolve_summary, strip_ext, tokenizer_vocab_size
from stack_common.config import Checks, as_plain, to_dataclass


@dataclass
class OptimizerConfig:
    name: str = "adamw"
    lr: float = 2.0e-4               # peak learning rate (7B: 2e-4, 13B: 1.5e-4)
    min_lr: float = 2.0e-5           # end of the cosine decay
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1.0e-8
    weight_decay: float = 0.1        # norms and biases get none
    clip_grad: float = 0.5
    warmup_iters: int = 2000
    decay_iters: Optional[int] = None  # None: decay until training.train_iters
    decay_style: str = "cosine"      # cosine | linear | constant
    distributed: bool = False        # megatron-core DistributedOptimizer (ZeRO-1 over DP)


@dataclass
class TrainingConfig:
    train_iters: int = 1000
    micro_batch_size: int = 1
    global_batch_size: int = 8
    seq_length: Optional[int] = None   # None: the model's sequence length
    seed: int = 1234                   # default of data_seed and init_seed
    data_seed: Optional[int] = None    # order of the training data (megatron's index shuffles); None: seed
    init_seed: Optional[int] = None    # weight initialization and every other RNG of the run; None: seed
    precision: str = "auto"            # auto (bf16 on GPU, fp32 on CPU) | bf16 | fp32
    device: str = "auto"               # auto (cuda when visible) | cuda (fail without it) | cpu
    eval_interval: int = 100
    eval_iters: int = 10
    max_consecutive_nonfinite: int = 5  # NaN/Inf losses in a row before the run stops
    loss_spike_factor: float = 3.0      # loss > factor x running mean is logged as a spike
    loss_spike_window: int = 50
    # Signals that save a checkpoint and exit with requeue_exit_code (a handler installed
    # before, e.g. submitit's requeue on SIGUSR2, runs after the save).
    exit_signals: list[str] = field(default_factory=lambda: ["SIGTERM", "SIGUSR1", "SIGUSR2"])
    requeue_exit_code: int = 3
    exit_duration_mins: float = 0.0     # save and exit (requeue code) after this many minutes; 0: never
    dry_run: bool = False               # print parameter counts and memory estimate, then exit
    # Stop (without SIGTERM) after this iteration; a checkpoint is saved first. 0: never.
    exit_after_iter: int = 0


@dataclass
class FaultDrillConfig:
    """Hydra group `faults`: drills that rehearse recovery (tests, new clusters); all off by
    default. Iterations whose loss is made NaN; an iteration after which every rank SIGKILLs
    itself; an iteration whose checkpoint save is killed after the files are written but before
    the checkpoint is published; the provenance drill, a sha256 of every micro-batch fed to the
    model in RUN_DIR/batch_hashes/ (written with each checkpoint and at the end)."""
    inject_nan_iters: list[int] = field(default_factory=list)
    inject_sigkill_after_iter: int = 0
    inject_sigkill_in_save_iter: int = 0
    log_batch_hashes: bool = False


# Keys that were in `training` before the `faults` group: a recorded config that has them
# (checkpoints of older runs) is read with them moved.
FAULT_KEYS = ("inject_nan_iters", "inject_sigkill_after_iter", "inject_sigkill_in_save_iter", "log_batch_hashes")


def split_recorded_training(training: dict) -> tuple[dict, dict]:
    """(training, faults) of a recorded config, either layout."""
    moved = {k: training[k] for k in FAULT_KEYS if k in training}
    return {k: v for k, v in training.items() if k not in moved}, moved


@dataclass
class TokenizerRef:
    model: Optional[str] = None        # SentencePiece .model (its sha256 goes into checkpoints)
    vocab_size: Optional[int] = None   # None: read from encode_summary.json next to the data
    eod_id: int = 2


@dataclass
class DataConfig:
    name: str = "train"
    paths: list[str] = field(default_factory=list)  # prefixes of .bin/.idx (".bin" optional)
    weights: Optional[list[float]] = None          # None: proportional to dataset size
    split: list[float] = field(default_factory=lambda: [98.0, 2.0, 0.0])  # train/valid/test shares of documents
    cache_dir: Optional[str] = None                 # None: RUN_DIR/data_cache
    summary: Optional[str] = None                   # encode_summary.json; None: next to paths[0]
    tokenizer: TokenizerRef = field(default_factory=TokenizerRef)
    eod_mask_loss: bool = False
    # Packed sequences: attend only within each document (a mask per sample, built by megatron's
    # GPTDataset; SDPA attention only) / restart position ids after each end-of-document (no
    # effect on either model: RoPE is built from the sequence length, ALiBi from distances).
    reset_attention_mask: bool = False
    reset_position_ids: bool = False
    num_workers: Optional[int] = None    # DataLoader worker processes; None: 2 on GPU, 0 on CPU


@dataclass
class CheckpointConfig:
    dir: str = "runs/pretrain"        # RUN_DIR: checkpoints/, tensorboard/, config.yaml
    save_interval: int = 1000         # rolling checkpoints every N iterations; 0: none
    keep_last: int = 2                # rolling checkpoints kept (milestones are never pruned)
    # Milestones are kept for good (never pruned). Token counts may be written 220e9: they are
    # read as numbers and must be whole and >= 0.
    milestone_tokens: list[float] = field(default_factory=list)  # kept once this many tokens are consumed
    milestone_every_tokens: float = 0  # also keep one each time this many tokens pass; 0: off
    milestone_step0: bool = False     # keep the initial weights as iter_0000000 (before any update)
    milestone_log_steps: int = 0      # keep steps 1, 2, 4, 8, ... up to this step; 0: off
    resume: bool = True               # auto-resume from RUN_DIR/checkpoints/latest
    load: Optional[str] = None        # explicit checkpoint dir to start from (overrides latest)
    load_optimizer: bool = True       # False: weights only (new optimizer and schedule)
    async_save: bool = True           # on GPU only; CPU saves are synchronous
    save_on_exit: bool = True


@dataclass
class LoggingConfig:
    log_interval: int = 10
    tensorboard: bool = True
    tensorboard_dir: Optional[str] = None   # None: RUN_DIR/tensorboard
    peak_tflops: Optional[float] = None     # per device, for MFU; None: guessed from device name


@dataclass
class RunConfig:
    """Everything except model and parallel (owned by the model layer)."""
    optimizer: OptimizerConfig
    training: TrainingConfig
    data: DataConfig
    checkpoint: CheckpointConfig
    logging: LoggingConfig
    faults: FaultDrillConfig
    model: Any            # pretrain.model.ModelConfig
    parallel: Any         # ParallelConfig (see parallel_from_cfg)
    resolved: dict        # the resolved config as plain data (stored in checkpoints)

    @property
    def run_dir(self) -> Path:
        return Path(self.checkpoint.dir)

    @property
    def seq_length(self) -> int:
        return self.training.seq_length or model_seq_length(self.model)

    @property
    def data_seed(self) -> int:
        return training_data_seed(self.training)

    @property
    def init_seed(self) -> int:
        t = self.training
        return t.seed if t.init_seed is None else t.init_seed


def use_bf16(run: RunConfig) -> bool:
    """bf16 weights with fp32 master weights: training.precision, auto meaning on GPU."""
    import torch

    precision = run.training.precision
    return precision == "bf16" or (precision == "auto" and torch.cuda.is_available())


def padded_vocab(run: RunConfig) -> int:
    """The model's vocabulary padded for its TP size."""
    from pretrain.model import padded_vocab_size

    return padded_vocab_size(run.model.vocab_size, run.parallel.tp, run.model.make_vocab_size_divisible_by)


def training_data_seed(training: TrainingConfig) -> int:
    return training.seed if training.data_seed is None else training.data_seed


def milestone_token_targets(ck: "CheckpointConfig") -> list[int]:
    """checkpoint.milestone_tokens as ints (220e9 is read as a float; validate checks it is whole)."""
    return [int(x) for x in ck.milestone_tokens]


@dataclass
class ParallelConfig:
    tp: int = 1
    pp: int = 1
    vpp: Optional[int] = None
    sequence_parallel: bool = False
    recompute: Any = False     # false | selective (core attention) | full (every layer; true too)


def parallel_from_cfg(cfg: DictConfig | dict) -> ParallelConfig:
    """The parallel group as a typed dataclass: a misspelled key is a config error, not ignored."""
    return to_dataclass(cfg if cfg is not None else {}, ParallelConfig, where="parallel")


def model_seq_length(model) -> int:
    for name in ("seq_length", "max_position_embeddings", "max_seq_length"):
        if getattr(model, name, None):
            return int(getattr(model, name))
    raise AttributeError("model config has no sequence length")


def world_size_from_env() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def load_run_config(cfg: DictConfig, world_size: int | None = None,
                    model_given: bool | None = None) -> RunConfig:
    """Type-check every group and check the whole config; raises ConfigError listing all problems.

    When the run starts from a checkpoint, the model comes from its meta.json unless `model=` was
    given (None: read from Hydra's command line); any field that differs is a problem."""
    from pretrain.model import ModelConfig

    checkpoint = to_dataclass(cfg.checkpoint, CheckpointConfig, where="checkpoint")
    source, early_problems = source_checkpoint(checkpoint)
    recorded = recorded_model(source)
    if recorded is not None:
        cfg = with_model(cfg, model_from_checkpoint(cfg, recorded, model_given))
        early_problems += architecture_mismatches(recorded, cfg.model)
    run = RunConfig(
        optimizer=to_dataclass(cfg.optimizer, OptimizerConfig, where="optimizer"),
        training=to_dataclass(cfg.training, TrainingConfig, where="training"),
        data=to_dataclass(cfg.data, DataConfig, where="data"),
        checkpoint=checkpoint,
        logging=to_dataclass(cfg.logging, LoggingConfig, where="logging"),
        faults=to_dataclass(cfg.get("faults") or {}, FaultDrillConfig, where="faults"),
        model=to_dataclass(cfg.model, ModelConfig, where="model"),
        parallel=parallel_from_cfg(cfg.parallel),
        resolved=as_plain(cfg),
    )
    world = world_size if world_size is not None else world_size_from_env()
    if run.training.dry_run:   # planning a layout from a laptop: assume its smallest world
        world = max(world, run.parallel.tp * run.parallel.pp)
    validate(run, world, early_problems)
    if recorded is not None:
        validate_tokenizer(run, source)
    return run


# ----------------------------------------------------------------------------- from a checkpoint

# Fields a checkpoint's weights and function depend on: they must match the model that loads it.
# Not seq_length: RoPE and ALiBi are computed for any length, no weight depends on it (training
# beyond the model's seq_length is refused by validate). Not make_vocab_size_divisible_by: the
# vocabulary padding loads across paddings, as across TP sizes.
ARCH_FIELDS = ("hidden_size", "num_layers", "num_attention_heads", "num_query_groups", "ffn_hidden_size",
               "vocab_size", "position_embedding_type", "rotary_base", "norm_epsilon", "normhead",
               "untie_embeddings_and_output_weights")


def source_checkpoint(ck: CheckpointConfig) -> tuple[Optional[Path], list[str]]:
    """The checkpoint the run will load (the trainer's own rule), or the config problem with
    checkpoint.load."""
    from pretrain.checkpointing import resume_source
    from stack_common.errors import ConfigError

    try:
        return resume_source(ck, ck.dir)[0], []
    except ConfigError as err:
        return None, list(err.problems)


def recorded_model(ckpt: Optional[Path]) -> Optional[dict]:
    from pretrain.checkpointing import read_meta

    model = read_meta(ckpt).get("model") if ckpt is not None else None
    return model if isinstance(model, dict) else None


def model_overrides_given() -> tuple[bool, list[str]]:
    """From Hydra's command line: was the `model=` group chosen, and which `model.X=` were set."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return True, []
    keys = [o.split("=", 1)[0].lstrip("+~") for o in HydraConfig.get().overrides.task]
    return "model" in keys, [k.removeprefix("model.") for k in keys if k.startswith("model.")]


def model_from_checkpoint(cfg: DictConfig, recorded: dict, model_given: bool | None) -> dict:
    """The model config to use: the command line's when `model=` was given, else the recorded
    one with the command line's `model.X=` overrides on top."""
    from pretrain.model import ModelConfig

    given, fields = model_overrides_given()
    if model_given is not None:
        given = model_given
    if given:
        return as_plain(cfg.model)
    known = set(ModelConfig.__dataclass_fields__)
    model = {k: v for k, v in recorded.items() if k in known}
    model.update({k: cfg.model[k] for k in fields if k in cfg.model})
    return model


def with_model(cfg: DictConfig, model: dict) -> DictConfig:
    from omegaconf import open_dict

    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.model = model
    return cfg


def _arch_value(model, name: str):
    value = model.get(name)
    if name == "num_query_groups":   # None and the head count both mean multi-head attention
        return value or model.get("num_attention_heads")
    if name in ("rotary_base", "norm_epsilon") and value is not None:
        return float(value)
    return value


def architecture_mismatches(recorded: dict, model) -> list[str]:
    """One line per architecture field where the model config differs from the checkpoint."""
    problems = []
    for name in ARCH_FIELDS:
        if name not in recorded or (name == "rotary_base" and recorded.get("position_embedding_type") == "alibi"):
            continue
        have, says = _arch_value(recorded, name), _arch_value(model, name)
        if have != says:
            problems.append(f"model.{name}: checkpoint has {have}, config says {says}")
    return problems


def validate_tokenizer(run: RunConfig, ckpt: Path) -> None:
    """Data encoded with another tokenizer than the checkpoint's is refused (by sha256), one
    config-error line per data path; a path whose tokenizer is unknown is a warning."""
    from pretrain.checkpointing import read_meta
    from stack_common.errors import ConfigError

    tok = read_meta(ckpt).get("tokenizer")
    want = tok.get("sha256") if isinstance(tok, dict) else None
    if not want or run.training.dry_run or not run.data.paths:
        return
    problems = [f"{where}: encoded with tokenizer {model} (sha256 {sha[:12]}), the checkpoint's "
                f"({ckpt / 'meta.json'}) is {tok.get('model')} (sha256 {want[:12]})"
                for where, model, sha in data_tokenizers(run.data) if sha and sha != want]
    if problems:
        raise ConfigError(problems)


def data_tokenizers(data: DataConfig) -> list[tuple[str, Optional[str], Optional[str]]]:
    """(what, tokenizer model, sha256) for data.tokenizer.model and each data path's
    encode_summary.json; a path whose tokenizer is unknown is logged."""
    from pretrain.data import summary_tokenizer
    from stack_common.atomic import sha256_file
    from stack_common.logging import get_logger

    found = []
    model = data.tokenizer.model
    if model and Path(model).is_file():
        found.append(("data.tokenizer.model", str(Path(model).resolve()), sha256_file(model)))
    for i, path in enumerate(data.paths):
        summary = resolve_summary(data, path)
        model, sha = summary_tokenizer(summary) if summary.is_file() else (None, None)
        if not sha:
            get_logger("pretrain.config").warning(
                f"data.paths[{i}]={path}: tokenizer unknown (no sha256 in {summary}); "
                "not checked against the checkpoint's")
        found.append((f"data.paths[{i}]={path}", model, sha))
    return found


# ----------------------------------------------------------------------------- validation

def validate(run: RunConfig, world_size: int, early_problems: list[str] = ()) -> None:
    """All violations at once, one line each (`early_problems`: checkpoint.load and the
    checkpoint's architecture, found while choosing the model)."""
    c = Checks()
    c.problems.extend(early_problems)
    m, p, t, o = run.model, run.parallel, run.training, run.optimizer
    heads = getattr(m, "num_attention_heads", None)
    layers = getattr(m, "num_layers", None)
    c.require(p.tp >= 1 and p.pp >= 1, f"parallel: tp={p.tp} and pp={p.pp} must be >= 1")
    if heads and p.tp >= 1:
        c.require(heads % p.tp == 0,
                  f"parallel.tp={p.tp} does not divide model.num_attention_heads={heads}")
    groups = getattr(m, "num_query_groups", None)
    if groups and p.tp >= 1:
        c.require(groups % p.tp == 0,
                  f"parallel.tp={p.tp} does not divide model.num_query_groups={groups}")
    if layers and p.pp >= 1:
        stages = p.pp * (p.vpp or 1)
        c.require(layers % stages == 0,
                  f"parallel.pp={p.pp} x vpp={p.vpp or 1} does not divide model.num_layers={layers}")
    if p.vpp:
        c.require(p.pp > 1, f"parallel.vpp={p.vpp} needs parallel.pp > 1")
    c.require(p.recompute in (False, True, None, "none", "selective", "full"),
              f"parallel.recompute={p.recompute!r} must be false, selective or full")
    model_parallel = max(p.tp, 1) * max(p.pp, 1)
    c.require(world_size % model_parallel == 0,
              f"world size {world_size} is not divisible by tp x pp = {model_parallel}")
    dp = max(world_size // model_parallel, 1)
    c.require(t.micro_batch_size >= 1, f"training.micro_batch_size={t.micro_batch_size} must be >= 1")
    if t.micro_batch_size >= 1:
        c.require(t.global_batch_size % (t.micro_batch_size * dp) == 0,
                  f"training.global_batch_size={t.global_batch_size} is not divisible by "
                  f"micro_batch_size x data-parallel size = {t.micro_batch_size} x {dp}")
    if p.vpp and t.micro_batch_size >= 1 and dp >= 1:
        micro = t.global_batch_size // max(t.micro_batch_size * dp, 1)
        c.require(micro % p.pp == 0,
                  f"interleaved pipeline needs microbatches per step ({micro}) divisible by pp={p.pp}")
    c.require(t.train_iters >= 1, f"training.train_iters={t.train_iters} must be >= 1")
    c.require(t.precision in ("auto", "bf16", "fp32"),
              f"training.precision={t.precision!r} must be auto, bf16 or fp32")
    _validate_device(c, t)
    c.require(not (getattr(m, "attention_backend", None) == "flash" and t.precision == "fp32"),
              "model.attention_backend=flash needs bf16 weights (flash-attn has no fp32 kernels): "
              "set training.precision=bf16 (or auto on a GPU), or use model.attention_backend=sdpa")
    c.require(t.eval_interval >= 0 and t.eval_iters >= 0, "training.eval_interval and eval_iters must be >= 0")
    try:
        seq = run.seq_length
        model_seq = model_seq_length(m)
        c.require(seq <= model_seq, f"training.seq_length={seq} exceeds the model's sequence length {model_seq}")
    except AttributeError:
        c.require(t.seq_length is not None, "training.seq_length is required (the model config has none)")
    c.require(o.name == "adamw", f"optimizer.name={o.name!r}: only adamw is supported")
    c.require(0 <= o.min_lr <= o.lr, f"optimizer: need 0 <= min_lr ({o.min_lr}) <= lr ({o.lr})")
    c.require(o.decay_style in ("cosine", "linear", "constant"),
              f"optimizer.decay_style={o.decay_style!r} must be cosine, linear or constant")
    decay = o.decay_iters or t.train_iters
    c.require(0 <= o.warmup_iters < decay,
              f"optimizer.warmup_iters={o.warmup_iters} must be below the decay length {decay}")
    c.require(o.clip_grad >= 0, f"optimizer.clip_grad={o.clip_grad} must be >= 0")
    if not t.dry_run:   # a dry run plans a layout: it reads no data
        _validate_data(c, run)
    ck = run.checkpoint
    c.require(ck.save_interval >= 0, f"checkpoint.save_interval={ck.save_interval} must be >= 0")
    c.require(ck.keep_last >= 1, f"checkpoint.keep_last={ck.keep_last} must be >= 1")
    _validate_milestones(c, ck)
    c.raise_if_any()


def _validate_device(c: Checks, t: TrainingConfig) -> None:
    import signal

    import torch

    if c.require(t.device in ("auto", "cuda", "cpu"), f"training.device={t.device!r} must be auto, cuda or cpu"):
        # A dry run plans for the GPU target from any machine.
        c.require(t.device != "cuda" or t.dry_run or torch.cuda.is_available(),
                  f"training.device=cuda but this process sees no CUDA device (torch {torch.__version__}, "
                  f"built for CUDA {torch.version.cuda}, CUDA_VISIBLE_DEVICES="
                  f"{os.environ.get('CUDA_VISIBLE_DEVICES', '(unset)')})")
    for name in t.exit_signals:
        c.require(isinstance(getattr(signal, str(name), None), signal.Signals),
                  f"training.exit_signals: {name!r} is not a signal name (e.g. SIGUSR2)")
    c.require(t.exit_duration_mins >= 0, f"training.exit_duration_mins={t.exit_duration_mins} must be >= 0")


def _validate_milestones(c: Checks, ck: CheckpointConfig) -> None:
    for i, value in enumerate(ck.milestone_tokens):
        c.require(float(value).is_integer() and value > 0,
                  f"checkpoint.milestone_tokens[{i}]={value!r} must be a whole number of tokens > 0")
    every = ck.milestone_every_tokens
    c.require(float(every).is_integer() and every >= 0,
              f"checkpoint.milestone_every_tokens={every!r} must be a whole number of tokens >= 0")
    c.require(ck.milestone_log_steps >= 0, f"checkpoint.milestone_log_steps={ck.milestone_log_steps} must be >= 0")


def _validate_data(c: Checks, run: RunConfig) -> None:
    d = run.data
    c.require(d.num_workers is None or d.num_workers >= 0, f"data.num_workers={d.num_workers} must be >= 0")
    if not c.require(len(d.paths) > 0, "data.paths is empty: give the encoded datasets (prefix of .bin/.idx)"):
        return
    for i, path in enumerate(d.paths):
        prefix = strip_ext(path)
        for ext in (".bin", ".idx"):
            c.require(Path(prefix + ext).is_file(), f"data.paths[{i}]: file does not exist: {prefix + ext}")
    if d.weights is not None:
        if c.require(len(d.weights) == len(d.paths),
                     f"data.weights has {len(d.weights)} entries for {len(d.paths)} data.paths"):
            c.require(all(w >= 0 for w in d.weights) and sum(d.weights) > 0,
                      f"data.weights={d.weights} must be >= 0 with a positive sum")
    ok = c.require(len(d.split) in (1, 2, 3) and all(x >= 0 for x in d.split) and sum(d.split) > 0,
                   f"data.split={d.split} must be up to 3 shares >= 0, e.g. [98, 2, 0]")
    if ok:
        c.require(d.split[0] > 0, f"data.split={d.split} gives no training documents")
        if run.training.eval_interval > 0 and run.training.eval_iters > 0:
            c.require(len(d.split) > 1 and d.split[1] > 0,
                      f"data.split={d.split} gives no validation documents but training.eval_interval > 0")
    if ok and not c.problems and all(Path(strip_ext(p) + ".idx").is_file() for p in d.paths):
        from pretrain.data import split_problems

        need_valid = run.training.eval_interval > 0 and run.training.eval_iters > 0
        for problem in split_problems(d.paths, d.split, run.seq_length, need_valid):
            c.require(False, problem)
    if d.tokenizer.model:
        c.path_exists(d.tokenizer.model, "data.tokenizer.model")
    vocab = tokenizer_vocab_size(d)
    model_vocab = getattr(run.model, "vocab_size", None)
    if c.require(vocab is not None,
                 "tokenizer vocabulary size unknown: set data.tokenizer.vocab_size or give "
                 f"data.summary (looked for {resolve_summary(d)})") and model_vocab:
        c.require(vocab <= model_vocab,
                  f"tokenizer vocabulary {vocab} does not fit model.vocab_size={model_vocab}")
        c.require(0 <= d.tokenizer.eod_id < vocab,
                  f"data.tokenizer.eod_id={d.tokenizer.eod_id} outside the vocabulary of {vocab}")
