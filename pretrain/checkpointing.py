"""Crash-safe checkpoints with megatron-core dist_checkpointing (torch_dist format).

Layout of a run directory:
    RUN_DIR/checkpoints/iter_0000100/   dist_checkpointing directory + meta.json
    RUN_DIR/checkpoints/latest          text file with the name of the newest complete checkpoint

A checkpoint is written into `.iter_0000100.tmp/`, completed with meta.json, then renamed into
place; `latest` is rewritten (atomically) last. A crash at any point leaves the previous
checkpoint in force, and the next start removes the leftover temporary directory.

Model weights are stored under the ShardedTensor keys of megatron-core's
`GPTModel.sharded_state_dict()` with no prefix (e.g. `embedding.word_embeddings.weight`,
`decoder.layers.mlp.linear_fc1.weight` with the layer index as a sharded axis,
`output_layer.weight`); the keys are global, so any TP/PP layout loads any other.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from stack_common.atomic import (atomic_write_json, atomic_write_text, fsync_tree, read_json_file,
                                  remove_stale_tmp)
from stack_common.errors import ConfigError, UserError
from stack_common.logging import get_logger

log = get_logger("pretrain.checkpointing")

LATEST = "latest"
META = "meta.json"
TOKENIZER_DIR = "tokenizer"   # the tokenizer a checkpoint carries (import-hf puts it there)
# The distributed optimizer's state in model space (each parameter's Adam moments with the
# parameter's own shape): loads into any TP/PP/DP layout. dp_reshardable (older checkpoints)
# keeps megatron's flat per-rank buffers and loads only where TP and PP are unchanged.
DIST_OPT_SHARDING = "fully_reshardable"


@dataclass
class TrainState:
    """Progress that a resume must restore besides weights and optimizer."""
    iteration: int = 0
    consumed_samples: int = 0
    consumed_tokens: int = 0
    skipped_iters: int = 0
    nonfinite_total: int = 0
    milestones_done: list[int] = field(default_factory=list)


@dataclass
class RecentProgress:
    """The moment of a checkpoint beyond its counters, for meta.json `progress` (and every
    export's training_state.json): learning rate, recent train losses, last validation loss."""
    window: int = 20
    lr: Optional[float] = None                               # the rate the last step used
    train: list = field(default_factory=list)                # [iteration, lm_loss] of recent steps taken
    valid: Optional[dict] = None                             # {"iteration", "lm_loss"} of the last evaluation

    def step(self, iteration: int, lr: float, lm_loss: float, skipped: bool) -> None:
        self.lr = lr
        if not skipped:
            self.train = (self.train + [[iteration, lm_loss]])[-self.window:]

    def evaluated(self, iteration: int, lm_loss: float) -> None:
        self.valid = {"iteration": iteration, "lm_loss": lm_loss}

    def as_meta(self, next_lr: float) -> dict:
        losses = [loss for _, loss in self.train]
        return {"lr": self.lr, "next_lr": next_lr, "train_lm_loss": self.train[-1][1] if self.train else None,
                "train_lm_loss_mean": sum(losses) / len(losses) if losses else None,
                "train_lm_loss_recent": self.train, "valid": self.valid}

    @classmethod
    def from_meta(cls, meta: dict) -> "RecentProgress":
        """Continue the record of a resumed run from its checkpoint's meta.json."""
        progress = meta.get("progress") if isinstance(meta.get("progress"), dict) else {}
        return cls(lr=progress.get("lr"), train=list(progress.get("train_lm_loss_recent") or []),
                   valid=progress.get("valid"))


def config_sha256(config: dict) -> str:
    """sha256 of the resolved run config as canonical JSON (sorted keys): equal configs, equal hashes."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def dir_name(iteration: int) -> str:
    return f"iter_{iteration:07d}"


def checkpoints_root(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "checkpoints"


# ----------------------------------------------------------------------------- finding

def is_complete(ckpt_dir: Path) -> bool:
    return (ckpt_dir / META).is_file() and (ckpt_dir / "metadata.json").is_file()


def find_latest(root: Path) -> Optional[Path]:
    """The checkpoint `latest` names, else the newest complete iter_* directory."""
    pointer = root / LATEST
    if pointer.is_file():
        candidate = root / pointer.read_text().strip()
        if is_complete(candidate):
            return candidate
        log.warning(f"{pointer} names {candidate.name}, which is incomplete; searching the directory")
    complete = [d for d in sorted(root.glob("iter_*")) if is_complete(d)]
    return complete[-1] if complete else None


def read_meta(ckpt_dir: str | os.PathLike) -> dict:
    return read_json_file(Path(ckpt_dir) / META)


def resolve_load(load: str | os.PathLike) -> Optional[Path]:
    """checkpoint.load as a checkpoint: the directory itself when it has meta.json, else the
    latest complete checkpoint of a run directory (or of its checkpoints/); None when neither."""
    path = Path(load)
    if (path / META).is_file():
        return path
    if not path.is_dir():
        return None
    return find_latest(checkpoints_root(path)) or find_latest(path)


def resume_source(c, run_dir: str | os.PathLike) -> tuple[Optional[Path], bool]:
    """Where a (re)started run loads from, and whether with optimizer and schedule.

    The run's own latest checkpoint always wins, so a requeued continued-pretraining job resumes
    where it stopped; `checkpoint.load` only starts a run that has no checkpoint yet (an
    import-hf checkpoint brings weights only). A `checkpoint.load` that holds no checkpoint is a
    ConfigError."""
    own = find_latest(checkpoints_root(run_dir)) if c.resume else None
    if own is not None:
        return own, True
    if not c.load:
        return None, False
    source = resolve_load(c.load)
    if source is None:
        problem = (f"path does not exist: {c.load}" if not Path(c.load).exists() else
                   f"{c.load} has no meta.json (give an iter_* directory or a run directory)")
        raise ConfigError([f"checkpoint.load: {problem}"])
    return source, c.load_optimizer and not imported_weights_only(source)


def agreed_resume_source(c, run_dir: str | os.PathLike) -> tuple[Optional[Path], bool]:
    """`resume_source` as rank 0 sees it, on every rank: on NFS with attribute caching another
    rank may still read an older `latest` and resume from another iteration."""
    if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
        return resume_source(c, run_dir)
    answer: list = [None]
    if _rank() == 0:
        try:
            answer = [resume_source(c, run_dir)]
        except ConfigError as err:
            answer = [err.problems]     # the list: a pickled ConfigError does not rebuild
    torch.distributed.broadcast_object_list(answer, src=0)
    if isinstance(answer[0], list):
        raise ConfigError(answer[0])
    return answer[0]


def imported_weights_only(ckpt_dir: str | os.PathLike) -> bool:
    """A checkpoint written by `checkpoints_tools import-hf`: weights, no optimizer or schedule."""
    return "imported_from" in read_meta(ckpt_dir)


# ----------------------------------------------------------------------------- state dicts

def unwrap(module):
    """The GPTModel inside DDP / Float16Module wrappers (state dict keys carry no `module.`)."""
    from pretrain.model import unwrap as unwrap_model

    return unwrap_model(module)


def _model_state(model_chunks, metadata=None) -> dict:
    def one(chunk):
        chunk = unwrap(chunk)
        return chunk.sharded_state_dict(metadata=metadata) if metadata else chunk.sharded_state_dict()
    if len(model_chunks) == 1:
        return {"model": one(model_chunks[0])}
    return {f"model{i}": one(chunk) for i, chunk in enumerate(model_chunks)}


def _rng_state() -> dict:
    state = {"random": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        from megatron.core import tensor_parallel
        state["cuda"] = torch.cuda.get_rng_state()
        state["rng_tracker"] = tensor_parallel.get_cuda_rng_tracker().get_states()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["random"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        from megatron.core import tensor_parallel
        torch.cuda.set_rng_state(state["cuda"])
        tensor_parallel.get_cuda_rng_tracker().set_states(state["rng_tracker"])


def _rng_sharded_object(state):
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    return ShardedObject("rng_state", state, (world,), (rank,), replica_id=0)


def _optimizer_metadata(optimizer, sharding: str = DIST_OPT_SHARDING) -> dict:
    return {"distrib_optim_sharding_type": sharding} if _distributed_optimizers(optimizer) else {}


def check_optimizer_kind(ckpt_dir, meta: dict, distributed: bool) -> None:
    """A run saved with the plain optimizer cannot load its state into the distributed one (the
    7B/13B presets turned it on), nor the reverse: one clear error instead of megatron's."""
    saved = meta.get("config", {}).get("optimizer", {}).get("distributed")
    if saved is None or bool(saved) == distributed:
        return
    kind = {True: "the distributed optimizer", False: "the plain optimizer"}
    raise UserError(f"its optimizer state was saved by {kind[bool(saved)]}, this run uses {kind[distributed]}",
                    file=str(ckpt_dir), field="optimizer.distributed",
                    expected=f"optimizer.distributed={str(bool(saved)).lower()}, or "
                             "checkpoint.load_optimizer=false (weights only)")


def saved_optimizer_sharding(ckpt_dir, meta: dict, layout: dict) -> str:
    """The distributed-optimizer format a checkpoint was saved in; a format that cannot load
    into this TP/PP layout is a UserError before anything is read."""
    from megatron.core import dist_checkpointing

    content = dist_checkpointing.load_content_metadata(str(ckpt_dir)) or {}
    sharding = content.get("distrib_optim_sharding_type", DIST_OPT_SHARDING)
    moved = [f"{k}={meta.get(k)} -> {layout[k]}" for k in ("tp", "pp", "vpp") if meta.get(k) != layout[k]]
    if sharding == "dp_reshardable" and moved:
        raise UserError(f"its distributed-optimizer state is dp_reshardable, which loads only into the same "
                        f"TP/PP layout ({', '.join(moved)})", file=str(ckpt_dir),
                        expected="the layout it was saved with, or checkpoint.load_optimizer=false "
                                 "(weights only, any layout)")
    return sharding


def full_state(model_chunks, optimizer, scheduler, state: TrainState, *, is_loading: bool,
               with_optimizer: bool = True, with_rng: bool = True,
               optimizer_sharding: str = DIST_OPT_SHARDING) -> dict:
    sd = _model_state(model_chunks)
    if optimizer is not None and with_optimizer:
        # Nested per chunk: with interleaving, chunks reuse local parameter names.
        sd["optimizer"] = optimizer.sharded_state_dict(
            _model_state(model_chunks), is_loading=is_loading,
            metadata=_optimizer_metadata(optimizer, optimizer_sharding))
        sd["opt_param_scheduler"] = scheduler.state_dict()
    sd["train_state"] = asdict(state)
    if with_rng:
        sd["rng_state"] = _rng_sharded_object(_rng_state())
    return sd


# ----------------------------------------------------------------------------- saving

class CheckpointManager:
    """Saves, publishes, prunes and loads the checkpoints of one run directory."""

    def __init__(self, run_dir, keep_last: int, meta_fn, async_save: bool = False,
                 kill_in_save_iter: int = 0, optimizer_sharding: str = DIST_OPT_SHARDING):
        self.root = checkpoints_root(run_dir)
        self.optimizer_sharding = optimizer_sharding   # of a distributed optimizer's state
        self.kill_in_save_iter = kill_in_save_iter   # fault drill: die between write and publish
        self.keep_last = keep_last
        self.meta_fn = meta_fn               # (TrainState, keep) -> dict for meta.json
        self.tokenizer_dir: Optional[Path] = None   # copied into every checkpoint (CKPT/tokenizer)
        self.async_queue = None
        if async_save and torch.cuda.is_available():
            from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue
            self.async_queue = AsyncCallsQueue(persistent=False)
        if _rank() == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            removed = self._remove_leftovers()
            if removed:
                log.warning(f"removed {removed} incomplete checkpoint(s) left by an interrupted save")
        _barrier()

    def _remove_leftovers(self) -> int:
        return remove_stale_tmp(self.root)

    def save(self, model_chunks, optimizer, scheduler, state: TrainState, keep: bool = False) -> Path:
        """Save on all ranks; publish (rename + `latest`) once every rank has written its part."""
        from pretrain.mcore_compat import dist_save

        self.finalize(blocking=True)
        final = self.root / dir_name(state.iteration)
        tmp = self.root / f".{final.name}.tmp"
        if _rank() == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        _barrier()
        # Before the first step there is no AdamW state to save (megatron's DistributedOptimizer
        # cannot even describe it): a step-0 checkpoint holds weights, progress and RNG.
        sd = full_state(model_chunks, optimizer, scheduler, state, is_loading=False,
                        with_optimizer=state.iteration > 0, optimizer_sharding=self.optimizer_sharding)
        meta = self.meta_fn(state, keep)
        request = dist_save(sd, tmp, async_save=self.async_queue is not None,
                            content_metadata=(_optimizer_metadata(optimizer, self.optimizer_sharding)
                                              if optimizer is not None else None),
                            parallel_group=_dp_group())
        if self.kill_in_save_iter and state.iteration == self.kill_in_save_iter:
            _barrier()
            log.warning(f"fault drill: killing this process in the middle of saving {final.name}")
            os.kill(os.getpid(), signal.SIGKILL)
        publish = lambda: self._publish(tmp, final, meta)  # noqa: E731
        if self.async_queue is not None:
            request.add_finalize_fn(publish)
            self.async_queue.schedule_async_request(request)
        else:
            _barrier()
            publish()
            _barrier()
        return final

    def finalize(self, blocking: bool = False) -> None:
        """Publish async saves that have finished (all ranks must call this)."""
        if self.async_queue is not None:
            self.async_queue.maybe_finalize_async_calls(blocking=blocking)

    def _publish(self, tmp: Path, final: Path, meta: dict) -> None:
        if _rank() != 0:
            return
        if self.tokenizer_dir is not None:
            shutil.copytree(self.tokenizer_dir, tmp / TOKENIZER_DIR, dirs_exist_ok=True)
        atomic_write_json(tmp / META, meta)
        fsync_tree(tmp)
        if final.exists():   # the same iteration saved again (e.g. after a resume): replace it
            old = self.root / f".{final.name}.old.tmp"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        if self.tokenizer_dir is not None:   # the source checkpoint may be pruned
            self.tokenizer_dir = final / TOKENIZER_DIR
        atomic_write_text(self.root / LATEST, final.name + "\n")
        log.info(f"saved checkpoint {final}" + (" (milestone, kept)" if meta.get("keep") else ""))
        self._prune()

    def _prune(self) -> None:
        """Delete rolling checkpoints beyond keep_last; milestones (keep=True) stay for good."""
        rolling = [d for d in sorted(self.root.glob("iter_*"))
                   if is_complete(d) and not read_meta(d).get("keep", False)]
        latest = (self.root / LATEST).read_text().strip()
        for old in rolling[: max(len(rolling) - self.keep_last, 0)]:
            if old.name != latest:
                shutil.rmtree(old, ignore_errors=True)
                log.info(f"pruned rolling checkpoint {old.name}")

    # ------------------------------------------------------------------------- loading

    def load(self, ckpt_dir: Path, model_chunks, optimizer, scheduler, *, layout: dict,
             load_optimizer: bool = True) -> TrainState:
        """Restore everything from `ckpt_dir` into freshly built objects; returns the progress.

        RNG states are restored only when the layout (tp, pp, dp) is unchanged."""
        from pretrain.mcore_compat import check_loadable

        meta = read_meta(ckpt_dir)
        check_vocab(meta, model_chunks)
        check_loadable(ckpt_dir)
        # A step-0 checkpoint holds no optimizer state (see save): the freshly built optimizer and
        # schedule are that state exactly.
        with_optimizer = load_optimizer and optimizer is not None and meta.get("iteration", 0) > 0
        if with_optimizer:
            check_optimizer_kind(ckpt_dir, meta, bool(_distributed_optimizers(optimizer)))
            init_distributed_optimizer_state(optimizer)
        same_layout = all(meta.get(k) == layout[k] for k in ("tp", "pp", "vpp", "dp"))
        sharding = saved_optimizer_sharding(ckpt_dir, meta, layout) if with_optimizer else DIST_OPT_SHARDING
        sd = full_state(model_chunks, optimizer, scheduler, TrainState(), is_loading=True,
                        with_optimizer=with_optimizer, with_rng=same_layout, optimizer_sharding=sharding)
        loaded = load_sharded(sd, ckpt_dir, parallel_group=_dp_group())
        _load_model(model_chunks, loaded, ckpt_dir)
        if optimizer is not None and not with_optimizer:
            # bf16: the fp32 main weights were copied from the initial weights when the optimizer
            # was built; without this the first step would write those back over the loaded ones.
            optimizer.reload_model_params()
        if with_optimizer:
            with torch.no_grad(), adam_steps_aside(optimizer):
                optimizer.load_state_dict(loaded["optimizer"])
            restore_adam_steps(optimizer)
            scheduler.load_state_dict(loaded["opt_param_scheduler"])
        if same_layout:
            _set_rng_state(loaded["rng_state"])
        state = TrainState(**loaded["train_state"]) if load_optimizer else TrainState()
        if _rank() == 0:
            log.info(f"loaded {ckpt_dir} (iteration {meta['iteration']}, saved with tp={meta['tp']} "
                     f"pp={meta['pp']} dp={meta['dp']}; now tp={layout['tp']} pp={layout['pp']} "
                     f"dp={layout['dp']})")
        return state


EXTRA_STATE = "_extra_state"


def is_extra_state(key: str) -> bool:
    """TransformerEngine's per-module `_extra_state` (fp8 metadata): absent from checkpoints of
    the local layer spec, and not needed to load weights across the two."""
    return key.split("/", 1)[0].rsplit(".", 1)[-1].startswith(EXTRA_STATE)


def _is_model_key(key: str) -> bool:
    return not key.startswith(("optimizer.", "rng_state"))


def load_sharded(sharded_state_dict: dict, ckpt_dir, parallel_group=None) -> dict:
    """dist_checkpointing load where only TransformerEngine `_extra_state` may differ between
    the checkpoint and the model (a TE checkpoint into local layers, or the reverse); any other
    model key missing on either side is a UserError naming the keys."""
    from pretrain.mcore_compat import dist_load

    loaded, not_asked, not_found = dist_load(sharded_state_dict, ckpt_dir, parallel_group=parallel_group)
    missing = sorted(k for k in not_found if not is_extra_state(k))
    unexpected = sorted(k for k in not_asked if _is_model_key(k) and not is_extra_state(k))
    _raise_key_mismatch(ckpt_dir, missing, unexpected)
    return loaded


def _raise_key_mismatch(ckpt_dir, missing: list, unexpected: list) -> None:
    if not missing and not unexpected:
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} key(s) the model needs are not in the checkpoint: {', '.join(missing[:5])}")
    if unexpected:
        parts.append(f"{len(unexpected)} checkpoint key(s) the model does not have: {', '.join(unexpected[:5])}")
    raise UserError("; ".join(parts), file=str(ckpt_dir),
                    expected="a checkpoint of this architecture (only TransformerEngine _extra_state may differ)")


def _load_model(model_chunks, loaded: dict, ckpt_dir) -> None:
    names = ["model"] if len(model_chunks) == 1 else [f"model{i}" for i in range(len(model_chunks))]
    for name, chunk in zip(names, model_chunks):
        result = unwrap(chunk).load_state_dict(loaded[name], strict=False)
        _raise_key_mismatch(ckpt_dir, [k for k in result.missing_keys if not is_extra_state(k)],
                            [k for k in result.unexpected_keys if not is_extra_state(k)])


def load_model_weights(model_chunks, ckpt_dir: str | os.PathLike) -> dict:
    """Load only the model weights of a checkpoint into freshly built model chunks, for any TP/PP
    (call inside an initialized `pretrain.parallel.init_distributed`). Returns meta.json."""
    from pretrain.mcore_compat import check_loadable

    check_loadable(ckpt_dir)
    loaded = load_sharded(_model_state(model_chunks), ckpt_dir)
    _load_model(model_chunks, loaded, ckpt_dir)
    return read_meta(ckpt_dir)


def check_vocab(meta: dict, model_chunks) -> None:
    """The tokenizer vocabulary must match; the TP padding may differ (padded rows are masked
    in the loss, and the embedding / output tables load with megatron's shape-mismatch rule)."""
    vocab = getattr(unwrap(model_chunks[0]), "baichuan", None)
    vocab = getattr(vocab, "vocab_size", None)
    if vocab is not None and meta.get("vocab_size") not in (None, vocab):
        raise UserError(f"checkpoint was trained with vocabulary {meta['vocab_size']}, the model has {vocab}",
                        file="meta.json", field="vocab_size", expected="the same tokenizer")


def init_distributed_optimizer_state(optimizer) -> None:
    """A fresh DistributedOptimizer has no AdamW state to load into: create it with one step of
    zero gradients at zero learning rate and weight decay (parameters stay as they are)."""
    for opt in _distributed_optimizers(optimizer):
        if len(opt.optimizer.state) > 0:
            continue
        saved = [(g["lr"], g["weight_decay"]) for g in opt.optimizer.param_groups]
        for g in opt.optimizer.param_groups:
            g["lr"], g["weight_decay"] = 0.0, 0.0
        opt._init_optimizer_states_with_dummy_values()
        for g, (lr, wd) in zip(opt.optimizer.param_groups, saved):
            g["lr"], g["weight_decay"] = lr, wd


@contextlib.contextmanager
def adam_steps_aside(optimizer):
    """megatron's fully_reshardable load copies the checkpoint's tensors into every entry of
    each parameter's optimizer state, and has none for torch AdamW's per-parameter `step`
    (apex/TE FusedAdam keep it in the param group): hide `step` from that copy (megatron has
    already set it from the param group)."""
    patched = _distributed_optimizers(optimizer)
    for opt in patched:
        opt._set_main_param_and_optimizer_states = _without_step(opt, opt._set_main_param_and_optimizer_states)
    try:
        yield
    finally:
        for opt in patched:
            del opt._set_main_param_and_optimizer_states      # the class's method again


def _without_step(opt, set_states):
    def wrapper(model_param, tensors):
        group_index, group_order = opt.model_param_group_index_map[model_param]
        state = opt.optimizer.state[opt.optimizer.param_groups[group_index]["params"][group_order]]
        step = state.pop("step", None) if "step" not in tensors else None
        try:
            set_states(model_param, tensors)
        finally:
            if step is not None:
                state["step"] = step
    return wrapper


def restore_adam_steps(optimizer) -> None:
    """AdamW keeps a `step` per parameter; the sharded format keeps it in the param group.

    Copy it back so the bias correction continues where it stopped."""
    for torch_opt in _torch_optimizers(optimizer):
        for group in torch_opt.param_groups:
            if "step" not in group:
                continue
            for p in group["params"]:
                st = torch_opt.state.get(p)
                if st and "step" in st:
                    st["step"] = torch.as_tensor(float(group["step"]), dtype=torch.float32)


def _inner_optimizers(optimizer) -> list:
    from megatron.core.optimizer import ChainedOptimizer

    return optimizer.chained_optimizers if isinstance(optimizer, ChainedOptimizer) else [optimizer]


def _distributed_optimizers(optimizer) -> list:
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    return [o for o in _inner_optimizers(optimizer) if isinstance(o, DistributedOptimizer)]


def _torch_optimizers(optimizer):
    return [o.optimizer for o in _inner_optimizers(optimizer) if getattr(o, "optimizer", None) is not None]


# ----------------------------------------------------------------------------- helpers

def _rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def _dp_group():
    """The data-parallel group (fully parallel save/load) once megatron's groups exist."""
    from megatron.core import parallel_state as mpu

    return mpu.get_data_parallel_group() if mpu.model_parallel_is_initialized() else None


def _barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
