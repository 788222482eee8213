"""Faults a long run must survive: preemption signals and time limits, non-finite losses, loss
spikes. (The drills that rehearse them are configured in the `faults` group, FaultDrillConfig.)"""
from __future__ import annotations

import signal
import time
from collections import deque
from pathlib import Path

import torch

from stack_common.atomic import atomic_write_json
from stack_common.logging import get_logger

log = get_logger("pretrain.faults")


class ExitSignals:
    """Record exit signals (SIGTERM: preemption or scancel; SIGUSR1/SIGUSR2: Slurm's warning
    before the time limit, submitit's is SIGUSR2) instead of dying mid-step, and the time
    limit `exit_duration_mins` (0: none) counted from `started` (time.monotonic()).

    The loop asks `exit_reason()` once per iteration; all ranks get the same answer (any rank
    got a signal, any rank ran out of time), so all save together. A handler installed before
    ours (submitit's requeue) is not lost: `hand_over()` calls it once the checkpoint is
    written and the process groups are gone, so no rank is left waiting in a collective."""

    def __init__(self, names: list[str], exit_duration_mins: float = 0.0, started: float | None = None):
        self.got: list[str] = []
        self.deadline = (started if started is not None else time.monotonic()) + exit_duration_mins * 60 \
            if exit_duration_mins > 0 else None
        self._previous = {}
        for name in names:
            sig = getattr(signal, name)
            self._previous[sig] = signal.signal(sig, self._handler)

    def _handler(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if name not in self.got:
            self.got.append(name)
            log.warning(f"received {name}: will save a checkpoint and exit after this iteration")

    def exit_reason(self) -> str | None:
        """'signal', 'time' or None, agreed over all ranks."""
        timed_out = self.deadline is not None and time.monotonic() >= self.deadline
        flags = torch.tensor([1.0 if self.got else 0.0, 1.0 if timed_out else 0.0])
        if torch.distributed.is_initialized():
            device = "cuda" if torch.cuda.is_available() else "cpu"
            flags = flags.to(device)
            torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
        signalled, late = (bool(x > 0) for x in flags.tolist())
        return "signal" if signalled else "time" if late else None

    def restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)

    def hand_over(self) -> None:
        """Restore the previous handlers and call those of the signals received (a Python
        handler such as submitit's requeue; the default action is not taken: we exit ourselves)."""
        self.restore()
        for name in self.got:
            sig = getattr(signal, name)
            previous = self._previous.get(sig)
            if callable(previous):
                log.warning(f"checkpoint saved: passing {name} on to the handler installed before ours")
                previous(sig, None)


class LossWatch:
    """Counts non-finite losses (total and in a row) and flags spikes over a running mean."""

    def __init__(self, max_in_row: int, spike_factor: float, window: int):
        self.max_in_row = max_in_row
        self.spike_factor = spike_factor
        self.recent: deque[float] = deque(maxlen=window)
        self.in_row = 0
        self.spikes = 0

    def record(self, skipped: bool) -> None:
        """Record one step: skipped for a NaN/Inf loss or grad norm, or applied."""
        self.in_row = self.in_row + 1 if skipped else 0

    def too_many(self) -> bool:
        return self.in_row >= self.max_in_row

    def is_spike(self, loss: float) -> bool:
        """Log-worthy jump: loss above factor x the running mean of recent finite losses."""
        spike = len(self.recent) >= min(10, self.recent.maxlen) and \
            loss > self.spike_factor * (sum(self.recent) / len(self.recent))
        if spike:
            self.spikes += 1
        else:
            self.recent.append(loss)
        return spike


class TooManyNonFinite(RuntimeError):
    pass


# ----------------------------------------------------------------------------- drills (group `faults`)

class BatchHashLog:
    """Provenance drill: the sha256 of every micro-batch one data-parallel rank feeds the model,
    by step and micro-batch, written to RUN_DIR/batch_hashes/dp<R>-from<ITER>.json (one file per
    start of the run) with each save and at the end."""

    def __init__(self, run_dir: Path, done_steps: int, dp_rank: int, num_micro: int, writes: bool):
        self.path = Path(run_dir) / "batch_hashes" / f"dp{dp_rank}-from{done_steps:07d}.json"
        self.done_steps, self.dp_rank, self.num_micro, self.writes = done_steps, dp_rank, num_micro, writes
        self.records: list[dict] = []

    def wrap(self, batches):
        from pretrain.data import microbatch_sha256

        for k, batch in enumerate(batches):
            self.records.append({"step": self.done_steps + k // self.num_micro + 1, "micro": k % self.num_micro,
                                 "dp_rank": self.dp_rank, "sha256": microbatch_sha256(batch)})
            yield batch

    def write(self) -> None:
        if self.writes:
            atomic_write_json(self.path, {"dp_rank": self.dp_rank, "records": self.records})


class inject_nan:
    """Fault drill: make this step's loss NaN by poisoning the final hidden states."""

    def __init__(self, model_chunks, active: bool):
        self.model_chunks, self.active, self.handles = model_chunks, active, []

    def __enter__(self):
        if self.active:
            last = self.model_chunks[-1]
            self.handles.append(last.register_forward_hook(lambda mod, inp, out: _nan_like(out)))
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def _nan_like(out):
    if isinstance(out, torch.Tensor):
        return out * float("nan")
    return out
