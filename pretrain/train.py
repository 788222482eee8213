"""The pretraining loop: validate config, start process groups, build model/optimizer/data,
resume, train with periodic evaluation and checkpoints, survive signals and NaNs."""
from __future__ import annotations

import math
import os
import signal
import time
from dataclasses import asdict
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from pretrain.checkpointing import (TOKENIZER_DIR, CheckpointManager, RecentProgress, TrainState,
                                    agreed_resume_source, checkpoints_root, config_sha256, read_meta)
from pretrain.config import RunConfig, load_run_config, milestone_token_targets, padded_vocab, use_bf16
from pretrain.faults import BatchHashLog, ExitSignals, LossWatch, inject_nan
from pretrain.monitoring import (Monitor, flops_per_token, memory_gb, peak_tflops, throughput, train_line,
                                 valid_line)
from stack_common.atomic import atomic_write_text
from stack_common.config import as_plain
from stack_common.errors import UserError
from stack_common.logging import get_logger

log = get_logger("pretrain.train")


def run(cfg: DictConfig) -> int:
    """Entry of `python -m pretrain`; returns the process exit code."""
    from pretrain.cpu_compat import apply_if_needed

    started = time.monotonic()
    if cfg.training.get("device", "auto") == "cpu":
        hide_cuda()
    apply_if_needed()
    run_cfg = load_run_config(cfg)          # every violation reported before any process group
    if run_cfg.training.dry_run:
        from pretrain.estimate import dry_run

        return dry_run(run_cfg)
    from pretrain.parallel import destroy, init_distributed

    p, t = run_cfg.parallel, run_cfg.training
    # Installed before the (long) setup: a signal during it is honoured after the first step.
    signals = ExitSignals(t.exit_signals, t.exit_duration_mins, started)
    try:
        init_distributed(p.tp, p.pp, vpp=p.vpp, seed=run_cfg.init_seed, device=resolved_device(run_cfg))
        try:
            code = Trainer(run_cfg).train(signals)
        finally:
            destroy()
    finally:
        signals.restore()
    signals.hand_over()
    return code


def hide_cuda() -> None:
    """training.device=cpu on a machine with GPUs: hide them before CUDA is first touched."""
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    if torch.cuda.is_available():
        raise UserError("CUDA was initialized before the GPUs could be hidden", field="training.device",
                        expected="CUDA_VISIBLE_DEVICES= in the environment for a CPU run on a GPU machine")


def resolved_device(run: RunConfig) -> str:
    """cuda or cpu (validate already refused training.device=cuda without CUDA)."""
    device = run.training.device
    return device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")


# ----------------------------------------------------------------------------- setup

class Trainer:
    def __init__(self, run: RunConfig):
        from megatron.core import parallel_state as mpu

        from pretrain.data import build_datasets, tokenizer_reference
        from pretrain.model.config import uses_transformer_engine
        from pretrain.optim import build_optimizer, build_scheduler
        from pretrain.parallelize import build_parallel_model

        self.run = run
        self.mpu = mpu
        self.tp, self.pp = mpu.get_tensor_model_parallel_world_size(), mpu.get_pipeline_model_parallel_world_size()
        self.dp, self.dp_rank = mpu.get_data_parallel_world_size(), mpu.get_data_parallel_rank()
        t = run.training
        self.num_micro = t.global_batch_size // (t.micro_batch_size * self.dp)
        self.seq = run.seq_length
        self.bf16 = use_bf16(run)
        self.tokenizer_ref = tokenizer_reference(run)
        if run.data.reset_attention_mask and uses_transformer_engine(run.model):
            raise UserError("document masks of packed sequences go through the SDPA attention; "
                            "TransformerEngine layers would ignore them", field="data.reset_attention_mask",
                            expected="model.attention_backend=sdpa with data.reset_attention_mask=true")
        self.model = build_parallel_model(run.model, tp=self.tp, pp=self.pp, vpp=run.parallel.vpp,
                                 dtype=torch.bfloat16 if self.bf16 else torch.float32,
                                 sequence_parallel=run.parallel.sequence_parallel,
                                 recompute=run.parallel.recompute,
                                 distributed_optimizer=run.optimizer.distributed)
        self.optimizer = build_optimizer(run, self.model, self.bf16)
        self.scheduler = build_scheduler(run, self.optimizer)
        self.state = TrainState()
        self.recent = RecentProgress()
        self.batch_hashes = None
        self.ckpt = CheckpointManager(run.run_dir, run.checkpoint.keep_last, self._meta,
                                      async_save=run.checkpoint.async_save,
                                      kill_in_save_iter=run.faults.inject_sigkill_in_save_iter)
        self._resume()
        self.train_ds, self.valid_ds = build_datasets(run)
        self._write_config()
        self.is_logger = self._is_logging_rank()
        tb_dir = Path(run.logging.tensorboard_dir or run.run_dir / "tensorboard")
        self.monitor = Monitor(tb_dir if run.logging.tensorboard else None, self.is_logger,
                               peak_tflops(run.logging.peak_tflops), purge_step=self.state.iteration + 1)
        self.flops_per_token = flops_per_token(run.model, self.seq, padded_vocab(run))
        self.watch = LossWatch(t.max_consecutive_nonfinite, t.loss_spike_factor, t.loss_spike_window)

    # ------------------------------------------------------------------------- checkpoints

    def _layout(self) -> dict:
        return {"tp": self.tp, "pp": self.pp, "vpp": self.run.parallel.vpp, "dp": self.dp}

    def _meta(self, state: TrainState, keep: bool) -> dict:
        from pretrain.model import layer_build
        from pretrain.optim import current_lr

        return {"iteration": state.iteration, "consumed_samples": state.consumed_samples,
                "consumed_tokens": state.consumed_tokens, **self._layout(),
                "model": as_plain(self.run.model), "layer_build": layer_build(self.run.model),
                "vocab_size": self.run.model.vocab_size,
                "padded_vocab_size": padded_vocab(self.run), "tokenizer": self.tokenizer_ref,
                "keep": keep, "train_state": asdict(state), "config": self.run.resolved,
                "config_sha256": config_sha256(self.run.resolved),
                "progress": self.recent.as_meta(current_lr(self.optimizer))}

    def _resume(self) -> None:
        source, load_optimizer = agreed_resume_source(self.run.checkpoint, self.run.run_dir)
        if source is None:
            if torch.distributed.get_rank() == 0:
                log.info("no checkpoint to resume from: starting at iteration 0")
            return
        self.state = self.ckpt.load(source, self.model, self.optimizer, self.scheduler,
                                    layout=self._layout(), load_optimizer=load_optimizer)
        if load_optimizer:
            self.recent = RecentProgress.from_meta(read_meta(source))
        if (source / TOKENIZER_DIR).is_dir():   # the tokenizer travels on with the weights
            self.ckpt.tokenizer_dir = source / TOKENIZER_DIR
        if self.state.consumed_samples % self.run.training.global_batch_size:
            raise UserError(f"checkpoint consumed {self.state.consumed_samples} samples, not a multiple "
                            f"of training.global_batch_size={self.run.training.global_batch_size}",
                            file=str(source), expected="the global batch size the run started with")

    def save(self, keep: bool = False) -> None:
        self.ckpt.save(self.model, self.optimizer, self.scheduler, self.state, keep=keep)
        self.last_saved = self.state.iteration
        if self.batch_hashes is not None:
            self.batch_hashes.write()

    def _write_config(self) -> None:
        if torch.distributed.get_rank() == 0:
            atomic_write_text(self.run.run_dir / "config.yaml",
                              OmegaConf.to_yaml(OmegaConf.create(self.run.resolved)))

    def _is_logging_rank(self) -> bool:
        mpu = self.mpu
        return (mpu.is_pipeline_last_stage(ignore_virtual=True) and mpu.get_tensor_model_parallel_rank() == 0
                and self.dp_rank == 0)

    # ------------------------------------------------------------------------- steps

    def _data_iterator(self, start: int):
        from pretrain.data import loader_settings, microbatches

        t = self.run.training
        batches = microbatches(self.train_ds, start, t.micro_batch_size, self.dp_rank, self.dp,
                               **loader_settings(self.run))
        if not self.run.faults.log_batch_hashes:
            return batches
        mpu = self.mpu
        writes = mpu.get_tensor_model_parallel_rank() == 0 and mpu.is_pipeline_first_stage(ignore_virtual=True)
        self.batch_hashes = BatchHashLog(self.run.run_dir, start // t.global_batch_size, self.dp_rank,
                                         self.num_micro, writes)
        return self.batch_hashes.wrap(batches)

    def train_one(self, data_iterator) -> dict:
        """One optimizer step (skipped inside train_step when the loss or grad norm is not finite);
        the metrics are the same on every rank."""
        from pretrain.step import train_step

        t = self.run.training
        inject = self.state.iteration + 1 in self.run.faults.inject_nan_iters
        with inject_nan(self.model, inject):
            return train_step(self.model, self.optimizer, data_iterator, self.num_micro,
                              t.micro_batch_size, self.seq)

    def evaluate(self) -> float:
        """Token-mean lm loss over the fixed validation set."""
        from pretrain.data import valid_microbatches
        from pretrain.step import eval_step

        t = self.run.training
        batches = valid_microbatches(self.valid_ds, self.run, self.dp_rank, self.dp)
        loss_sum, tokens = 0.0, 0
        for _ in range(t.eval_iters):
            m = eval_step(self.model, batches, self.num_micro, t.micro_batch_size, self.seq)
            loss_sum += m["lm_loss"] * m["tokens"]
            tokens += m["tokens"]
        return loss_sum / max(tokens, 1)

    # ------------------------------------------------------------------------- loop

    def train(self, signals: ExitSignals | None = None) -> int:
        """Train to training.train_iters; returns 0, or requeue_exit_code after an exit signal
        or training.exit_duration_mins (a checkpoint is saved first)."""
        from pretrain.optim import current_lr

        t, c = self.run.training, self.run.checkpoint
        own_signals = signals is None
        signals = signals or ExitSignals(t.exit_signals, t.exit_duration_mins)
        self.last_saved = self.state.iteration
        data_iterator = self._data_iterator(self.state.consumed_samples)
        exit_code = None
        try:
            if self.state.iteration == 0:
                if t.eval_interval > 0:
                    self._evaluate_and_log()
                if c.milestone_step0:
                    self.save(keep=True)    # the initial weights, before any update
            while exit_code is None and self.state.iteration < t.train_iters:
                lr = current_lr(self.optimizer)        # the rate this step uses
                start = time.perf_counter()
                m = self.train_one(data_iterator)
                self._after_step(m, time.perf_counter() - start, lr)
                exit_code = self._exit_code(signals)
            if exit_code is None and c.save_on_exit and self.last_saved != self.state.iteration:
                self.save()
        finally:
            self.ckpt.finalize(blocking=True)
            if self.batch_hashes is not None:
                self.batch_hashes.write()
            if own_signals:
                signals.restore()
            self.monitor.close()
        return exit_code or 0

    def _after_step(self, m: dict, step_time: float, lr: float) -> None:
        """Progress, skipped-step and spike bookkeeping, logging, evaluation, the non-finite
        stop and the scheduled saves of the step just taken."""
        run, t, c, lg, st = self.run, self.run.training, self.run.checkpoint, self.run.logging, self.state
        st.iteration += 1
        st.consumed_samples += t.global_batch_size
        st.consumed_tokens += t.global_batch_size * self.seq
        skipped = bool(m.get("skipped", not math.isfinite(m["total_loss"])))
        self.recent.step(st.iteration, lr, m["lm_loss"], skipped)
        self.watch.record(skipped)   # a non-finite loss or grad norm: counts toward the stop
        if skipped:
            st.skipped_iters += 1
            st.nonfinite_total += 1
            log.warning(f"iteration {st.iteration}: non-finite loss {m['total_loss']} or grad norm "
                        f"{m['grad_norm']}: step skipped ({self.watch.in_row} in a row)")
        else:
            self.scheduler.step(increment=1)
        if not skipped and self.watch.is_spike(m["lm_loss"]):
            log.warning(f"iteration {st.iteration}: loss spike {m['lm_loss']:.4f} > "
                        f"{t.loss_spike_factor} x running mean")
        self.ckpt.finalize()
        if st.iteration % lg.log_interval == 0 or skipped:
            self._log_train(m, step_time, lr)
        if t.eval_interval > 0 and st.iteration % t.eval_interval == 0:
            self._evaluate_and_log()
        if self.watch.too_many():
            self.save()
            raise UserError(f"{self.watch.in_row} non-finite losses or grad norms in a row at iteration "
                            f"{st.iteration}; saved {checkpoints_root(run.run_dir)}/latest. Lower "
                            "optimizer.lr or resume from an earlier checkpoint with other data order")
        keep = self._milestone_reached()
        if keep or (c.save_interval and st.iteration % c.save_interval == 0):
            self.save(keep=keep)

    def _exit_code(self, signals: ExitSignals) -> int | None:
        """After a step: requeue_exit_code on an exit signal or the time limit, 0 at
        training.exit_after_iter (each after a save), None to go on. Runs the SIGKILL drill."""
        t, st = self.run.training, self.state
        reason = signals.exit_reason()
        if reason:
            why = (f"exit signal {signals.got or '(on another rank)'}" if reason == "signal" else
                   f"training.exit_duration_mins={t.exit_duration_mins} reached")
            log.warning(f"{why}: saving and exiting with requeue code {t.requeue_exit_code}")
            self._save_unless_saved()
            return t.requeue_exit_code
        if st.iteration == self.run.faults.inject_sigkill_after_iter:
            log.warning(f"fault drill: SIGKILL after iteration {st.iteration}")
            torch.distributed.barrier()
            os.kill(os.getpid(), signal.SIGKILL)
        if t.exit_after_iter and st.iteration >= t.exit_after_iter:
            self._save_unless_saved()
            return 0
        return None

    def _save_unless_saved(self) -> None:
        if self.last_saved != self.state.iteration:
            self.save()

    def _milestone_reached(self) -> bool:
        c, st = self.run.checkpoint, self.state
        targets = milestone_token_targets(c)
        every = int(c.milestone_every_tokens)
        if every:
            targets.append((st.consumed_tokens // every) * every)
        due = [x for x in targets if 0 < x <= st.consumed_tokens and x not in st.milestones_done]
        st.milestones_done.extend(due)
        return bool(due) or is_log_step(st.iteration, c.milestone_log_steps)

    def _evaluate_and_log(self) -> None:
        loss = self.evaluate()
        it = self.state.iteration
        self.recent.evaluated(it, loss)
        self.monitor.scalars({"valid/lm_loss": loss, "valid/perplexity": math.exp(min(loss, 30.0))}, it)
        self.monitor.console(valid_line(it, loss))

    def _log_train(self, m: dict, step_time: float, lr: float) -> None:
        t, st = self.run.training, self.state
        param_norm = self._param_norm()
        rate = throughput(t.global_batch_size * self.seq, step_time, self.flops_per_token,
                          torch.distributed.get_world_size(), self.monitor.peak)
        tokens_per_s, tflops, mfu = rate["tokens_per_sec"], rate["tflops_per_device"], rate["mfu"]
        mem, max_mem = memory_gb()
        self.monitor.scalars({
            "train/lm_loss": m["lm_loss"], "train/z_loss": m["z_loss"], "train/total_loss": m["total_loss"],
            "train/max_logit": m["max_logit"], "train/learning_rate": lr, "train/grad_norm": m["grad_norm"],
            "train/param_norm": param_norm, "train/skipped_steps": st.skipped_iters,
            "train/loss_spikes": self.watch.spikes, "throughput/tokens_per_sec": tokens_per_s,
            "throughput/samples_per_sec": t.global_batch_size / step_time,
            "throughput/tflops_per_device": tflops, "throughput/mfu": mfu if mfu is not None else 0.0,
            "time/step_seconds": step_time, "memory/allocated_gb": mem, "memory/max_allocated_gb": max_mem,
            "progress/consumed_tokens": st.consumed_tokens, "progress/consumed_samples": st.consumed_samples,
        }, st.iteration)
        self.monitor.console(train_line(st.iteration, t.train_iters, st.consumed_samples, st.consumed_tokens,
                                        step_time * 1000, lr, t.global_batch_size, m, st.skipped_iters,
                                        st.nonfinite_total, tflops if torch.cuda.is_available() else None))

    def _param_norm(self) -> float:
        """L2 norm of all weights, each counted once across TP/PP ranks (called on every rank)."""
        from megatron.core.tensor_parallel import param_is_not_tensor_parallel_duplicate
        from megatron.core.transformer.module import param_is_not_shared

        total = torch.zeros(1, dtype=torch.float64, device=_device())
        for chunk in self.model:
            for p in chunk.parameters():
                if param_is_not_shared(p) and param_is_not_tensor_parallel_duplicate(p):
                    total += p.detach().double().pow(2).sum()
        torch.distributed.all_reduce(total, group=self.mpu.get_model_parallel_group())
        return math.sqrt(total.item())


def is_log_step(iteration: int, up_to: int) -> bool:
    """Steps 1, 2, 4, 8, ... up to `up_to` (the log-spaced early milestones)."""
    return 1 <= iteration <= up_to and iteration & (iteration - 1) == 0


def _device():
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
