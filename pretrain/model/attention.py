"""Core attention through `torch.nn.functional.scaled_dot_product_attention`: causal for RoPE
models, causal plus an ALiBi bias for the 13B model, and megatron's attention mask (True where
attention is cut: document ends of packed sequences) when one is given. Drop-in for
megatron-core's DotProductAttention inside SelfAttention (same constructor and forward contract)."""
from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Optional

import torch
import torch.nn.functional as F

from megatron.core import tensor_parallel
from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.transformer.module import MegatronModule

from .alibi import alibi_causal_bias, alibi_slopes

# One ALiBi bias shared by all layers (13B at 4096 tokens: 1.3 GB per copy in bf16 at TP=1), and
# one per document mask: built once per forward, not once per layer.
_BIAS_CACHE: dict = {}
_MASKED_BIAS_CACHE: dict = {}


def clear_bias_cache() -> None:
    _BIAS_CACHE.clear()
    _MASKED_BIAS_CACHE.clear()


def masked_alibi_bias(bias: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """[b or 1, heads, s, s]: the ALiBi `bias` with -inf where `attention_mask` (True = cut) is
    set. Every layer of a forward gets the same tensor; the cache holds the mask itself, so its
    address cannot be reused by another micro-batch's mask while the entry lives."""
    entry = _MASKED_BIAS_CACHE.get("entry")
    if entry is not None and entry[0] is attention_mask and entry[1] == attention_mask._version \
            and entry[2] is bias:
        return entry[3]
    masked = bias.unsqueeze(0).masked_fill(attention_mask, float("-inf"))
    _MASKED_BIAS_CACHE["entry"] = (attention_mask, attention_mask._version, bias, masked)
    return masked


class SDPAttention(MegatronModule):
    """Inputs q/k/v [s, b, heads_per_rank, head_dim]; output [s, b, heads_per_rank x head_dim]."""

    def __init__(self, config, layer_number: int, attn_mask_type, attention_type: str,
                 attention_dropout: Optional[float] = None, softmax_scale: Optional[float] = None,
                 cp_comm_type: Optional[str] = None, pg_collection: Optional[ProcessGroupCollection] = None,
                 alibi: bool = False, flash: bool = False):
        super().__init__(config=config)
        assert config.context_parallel_size == 1, "context parallelism needs TransformerEngine"
        if pg_collection is None:
            pg_collection = ProcessGroupCollection.use_mpu_process_groups(required_pgs=["tp"])
        tp_size, tp_rank = pg_collection.tp.size(), pg_collection.tp.rank()
        self.heads = config.num_attention_heads // tp_size
        self.groups = config.num_query_groups // tp_size
        self.head_dim = config.kv_channels
        self.softmax_scale = softmax_scale or 1.0 / math.sqrt(self.head_dim)
        self.dropout = config.attention_dropout if attention_dropout is None else attention_dropout
        self.alibi = alibi
        if alibi:
            # This rank's heads are a contiguous block of the global heads.
            own = alibi_slopes(config.num_attention_heads)[tp_rank * self.heads:(tp_rank + 1) * self.heads]
            self.slopes = tuple(own)
        self._slopes_tensor: Optional[torch.Tensor] = None
        self.flash = flash_kernel() if flash else None

    def _flash(self, query, key, value, dropout: float):
        """flash-attn: causal, ALiBi from its slopes (bias slope x (j - i), as ours), grouped
        K/V heads as they are. [s, b, h, d] in, [s, b, h x d] out."""
        q, k, v = (t.transpose(0, 1) for t in (query, key, value))
        slopes = self._slopes_on(q.device) if self.alibi else None
        with tensor_parallel.get_cuda_rng_tracker().fork() if dropout > 0 else nullcontext():
            out = self.flash(q, k, v, dropout_p=dropout, softmax_scale=self.softmax_scale, causal=True,
                             alibi_slopes=slopes)
        return out.transpose(0, 1).reshape(query.shape[0], query.shape[1], self.heads * self.head_dim)

    def _slopes_on(self, device) -> torch.Tensor:
        # Made once per device, not at every call. A plain attribute, not a buffer: Float16Module
        # would cast a buffer to bf16, and flash-attn takes fp32 slopes.
        if self._slopes_tensor is None or self._slopes_tensor.device != device:
            self._slopes_tensor = torch.tensor(self.slopes, dtype=torch.float32, device=device)
        return self._slopes_tensor

    def _bias(self, seq_q: int, seq_k: int, dtype, device) -> torch.Tensor:
        key = (self.slopes, seq_q, seq_k, dtype, str(device))
        if key not in _BIAS_CACHE:
            clear_bias_cache()
            slopes = torch.tensor(self.slopes, dtype=torch.float32, device=device)
            _BIAS_CACHE[key] = alibi_causal_bias(slopes, seq_q, seq_k, dtype)
        return _BIAS_CACHE[key]

    def forward(self, query, key, value, attention_mask=None, attn_mask_type=None,
                attention_bias=None, packed_seq_params=None):
        assert packed_seq_params is None, "packed sequences need TransformerEngine attention"
        dropout = self.dropout if self.training else 0.0
        if self.flash is not None and attention_mask is None:     # document masks: the SDPA path
            return self._flash(query, key, value, dropout)
        seq_q, seq_k = query.shape[0], key.shape[0]
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))   # [b, heads, s, d]
        if self.groups != self.heads:
            k = k.repeat_interleave(self.heads // self.groups, dim=1)
            v = v.repeat_interleave(self.heads // self.groups, dim=1)
        mask = self._bias(seq_q, seq_k, q.dtype, q.device) if self.alibi else None
        if attention_mask is not None:      # [b or 1, 1, s, s], causal already
            if mask is None:
                mask = ~attention_mask
            else:
                mask = masked_alibi_bias(mask, attention_mask)
        with tensor_parallel.get_cuda_rng_tracker().fork() if dropout > 0 else nullcontext():
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout,
                                                 is_causal=mask is None, scale=self.softmax_scale)
        b = out.shape[0]
        return out.permute(2, 0, 1, 3).reshape(seq_q, b, self.heads * self.head_dim)


def flash_kernel():
    """flash-attn's `flash_attn_func`; a clear error where it cannot run."""
    if not torch.cuda.is_available():
        raise RuntimeError("model.attention_backend=flash needs CUDA (flash-attn kernels); use sdpa on the CPU")
    try:
        from flash_attn import flash_attn_func
    except ImportError as err:
        raise RuntimeError(f"model.attention_backend=flash needs the flash-attn package ({err}); "
                           "use sdpa, or te for RoPE models") from None
    return flash_attn_func
