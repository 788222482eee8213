"""TensorBoard scalars and Megatron-style console lines.

Tags written (one point per logged iteration unless noted):
  train/lm_loss, train/z_loss, train/total_loss, train/max_logit, train/learning_rate,
  train/grad_norm, train/param_norm, train/skipped_steps (total so far), train/loss_spikes,
  throughput/tokens_per_sec, throughput/samples_per_sec, throughput/tflops_per_device,
  throughput/mfu, time/step_seconds, memory/allocated_gb, memory/max_allocated_gb,
  progress/consumed_tokens, progress/consumed_samples,
  valid/lm_loss, valid/perplexity (at each evaluation).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional

import torch

TRAIN_TAGS = [
    "train/lm_loss", "train/z_loss", "train/total_loss", "train/max_logit", "train/learning_rate",
    "train/grad_norm", "train/param_norm", "train/skipped_steps", "train/loss_spikes",
    "throughput/tokens_per_sec", "throughput/samples_per_sec", "throughput/tflops_per_device",
    "throughput/mfu", "time/step_seconds", "memory/allocated_gb", "memory/max_allocated_gb",
    "progress/consumed_tokens", "progress/consumed_samples",
]
VALID_TAGS = ["valid/lm_loss", "valid/perplexity"]

# Dense bf16 peak of common accelerators, TFLOP/s per device (for MFU). Matched in this order
# against the device name: the PCIe and NVL parts before the SXM part that shares their name.
PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.0, "H200": 989.0, "H800": 989.0,
               "A100": 312.0, "A800": 312.0, "L40S": 362.0, "B200": 2250.0}


def device_peak_tflops(name: str) -> Optional[float]:
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def peak_tflops(configured: Optional[float]) -> Optional[float]:
    if configured:
        return configured
    if not torch.cuda.is_available():
        return None
    return device_peak_tflops(torch.cuda.get_device_name())


def flops_per_token(model_cfg, seq_length: int, vocab_size: int) -> float:
    """Training FLOPs per token (forward + backward = 3 x forward), matmuls and attention; causal
    attention counts half the seq x seq products (Megatron's MFU counts all of them)."""
    h = model_cfg.hidden_size
    layers = model_cfg.num_layers
    ffn = getattr(model_cfg, "ffn_hidden_size", None) or 4 * h
    kv = getattr(model_cfg, "num_query_groups", None) or model_cfg.num_attention_heads
    kv_dim = h * kv // model_cfg.num_attention_heads
    per_layer = 2 * (h * h + 2 * h * kv_dim + h * h)          # q, k, v, output projections
    per_layer += 2 * 3 * h * ffn                               # SwiGLU: gate, up, down
    per_layer += 2 * 2 * seq_length * h / 2                   # causal scores and values
    return 3.0 * (layers * per_layer + 2 * h * vocab_size)


def throughput(tokens: int, step_seconds: float, flops_per_token: float, world: int,
               peak: Optional[float]) -> dict:
    """Tokens/s of the step, model TFLOP/s per device and MFU (their share of `peak` TFLOP/s; None when
    the peak is unknown)."""
    tokens_per_sec = tokens / step_seconds
    tflops = tokens_per_sec * flops_per_token / world / 1e12
    return {"tokens_per_sec": tokens_per_sec, "tflops_per_device": tflops, "mfu": tflops / peak if peak else None}


def memory_gb() -> tuple[float, float]:
    if torch.cuda.is_available():
        return torch.cuda.memory_allocated() / 2**30, torch.cuda.max_memory_allocated() / 2**30
    import psutil

    rss = psutil.Process(os.getpid()).memory_info().rss / 2**30
    return rss, rss


class Monitor:
    """Writes scalars on the one rank that holds the losses (last pipeline stage, first TP/DP rank)."""

    def __init__(self, tb_dir: Optional[Path], active: bool, peak: Optional[float], purge_step: int = 1):
        self.active = active
        self.peak = peak
        self.writer = None
        if active and tb_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            # After a resume, points the killed run logged past its checkpoint are superseded.
            self.writer = SummaryWriter(log_dir=str(tb_dir), purge_step=purge_step if purge_step > 1 else None)

    def scalars(self, values: dict, step: int) -> None:
        if self.writer is None:
            return
        for tag, value in values.items():
            if value is not None and math.isfinite(float(value)):
                self.writer.add_scalar(tag, float(value), step)
        self.writer.flush()

    def console(self, text: str) -> None:
        if self.active:
            print(text, flush=True)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def train_line(it: int, total: int, consumed: int, tokens: int, step_ms: float, lr: float,
               gbs: int, m: dict, skipped: int, nonfinite: int, tflops: Optional[float]) -> str:
    """One line in the style of Megatron-LM's training log."""
    parts = [f" iteration {it:8d}/{total:8d}", f"consumed samples: {consumed:12d}",
             f"consumed tokens: {tokens:14d}", f"elapsed time per iteration (ms): {step_ms:.1f}"]
    if tflops is not None:
        parts.append(f"throughput per GPU (TFLOP/s/GPU): {tflops:.1f}")
    parts += [f"learning rate: {lr:.6E}", f"global batch size: {gbs:5d}",
              f"lm loss: {m['lm_loss']:.6E}", f"z loss: {m['z_loss']:.6E}",
              f"max logit: {m['max_logit']:.3f}", f"grad norm: {m['grad_norm']:.3f}",
              f"number of skipped iterations: {skipped:3d}",
              f"number of nan iterations: {nonfinite:3d}"]
    return " | ".join(parts) + " |"


def valid_line(it: int, loss: float) -> str:
    bar = "-" * 100
    ppl = math.exp(min(loss, 20.0))
    return (f"{bar}\n validation loss at iteration {it} | lm loss value: {loss:.6E} | "
            f"lm loss PPL: {ppl:.6E} |\n{bar}")
