"""Faults a long run must survive: preemption signals, non-finite losses, loss spikes."""
from __future__ import annotations

import signal
from collections import deque

import torch

from stack_common.logging import get_logger

log = get_logger("pretrain.faults")


class ExitSignals:
    """Record SIGTERM/SIGUSR1 (Slurm preemption, scancel) instead of dying mid-step.

    The loop asks `received()` once per iteration; all ranks agree (any rank got one)."""

    def __init__(self, names: list[str]):
        self.got: list[str] = []
        self._previous = {}
        for name in names:
            sig = getattr(signal, name)
            self._previous[sig] = signal.signal(sig, self._handler)

    def _handler(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if name not in self.got:
            self.got.append(name)
            log.warning(f"received {name}: will save a checkpoint and exit after this iteration")

    def received(self) -> bool:
        flag = torch.tensor([1.0 if self.got else 0.0])
        if torch.distributed.is_initialized():
            device = "cuda" if torch.cuda.is_available() else "cpu"
            flag = flag.to(device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item() > 0)

    def restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


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
