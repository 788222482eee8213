"""Baichuan 2 on megatron-core: config, GPTModel with NormHead / ALiBi / SDPA, max-z loss.

`ModelConfig` and `padded_vocab_size` import without megatron; the rest loads it on first use."""
from .config import ModelConfig, padded_vocab_size, transformer_config

_LAZY = {
    "SDPAttention": "attention", "alibi_slopes": "alibi", "alibi_causal_bias": "alibi",
    "BaichuanGPTModel": "gpt", "NormHeadLinear": "gpt", "build_model": "gpt", "layer_spec": "gpt",
    "layer_build": "gpt", "final_norm": "gpt",
    "unwrap": "gpt", "lm_loss_terms": "loss", "mask_vocab_padding": "loss", "vocab_parallel_max": "loss",
}

__all__ = ["ModelConfig", "padded_vocab_size", "transformer_config", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
