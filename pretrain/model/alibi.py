"""ALiBi slopes and the causal bias of Baichuan 2 13B (plain PyTorch, no megatron import)."""
from __future__ import annotations

import math

import torch


def alibi_slopes(num_heads: int) -> list[float]:
    """Baichuan 2 / ALiBi slopes: a geometric sequence 2^(-8i/n) for a power-of-two head count;
    otherwise those of the nearest lower power of two followed by every other slope of the next
    power of two (so 40 heads = 32 geometric + 8 interleaved)."""
    def geometric(n: int) -> list[float]:
        return [2.0 ** (-8.0 * (i + 1) / n) for i in range(n)]

    if num_heads & (num_heads - 1) == 0:
        return geometric(num_heads)
    lower = 2 ** int(math.floor(math.log2(num_heads)))
    return geometric(lower) + alibi_slopes(2 * lower)[0::2][: num_heads - lower]


def alibi_causal_bias(slopes: torch.Tensor, seq_q: int, seq_k: int, dtype: torch.dtype) -> torch.Tensor:
    """[heads, seq_q, seq_k] additive bias: slope x (j - i) on and below the diagonal, -inf above.
    Distances are relative to the query so values near the diagonal stay exact in bf16."""
    i = torch.arange(seq_k - seq_q, seq_k, device=slopes.device, dtype=torch.float32)[:, None]
    j = torch.arange(seq_k, device=slopes.device, dtype=torch.float32)[None, :]
    distance = j - i
    bias = slopes.float()[:, None, None] * distance
    bias = bias.masked_fill(distance > 0, float("-inf"))
    return bias.to(dtype)
