"""The Baichuan 2 model description (Hydra group `model`) and its megatron-core TransformerConfig."""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F


@dataclass
class ModelConfig:
    name: str = "tiny_rope"
    hidden_size: int = 64
    num_layers: int = 2
    num_attention_heads: int = 4
    num_query_groups: Optional[int] = None   # None: multi-head attention (Baichuan 2)
    ffn_hidden_size: int = 172
    vocab_size: int = 1000                   # the tokenizer's; padded per TP by padded_vocab_size
    seq_length: int = 128
    position_embedding_type: str = "rope"    # rope (7B) | alibi (13B)
    rotary_base: float = 10000.0
    norm_epsilon: float = 1.0e-6
    normhead: bool = True                    # output rows divided by their L2 norm
    z_loss_coeff: float = 2.0e-4             # max-z loss weight; 0 turns it off
    init_method_std: float = 0.02
    untie_embeddings_and_output_weights: bool = True
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    make_vocab_size_divisible_by: int = 128  # times TP
    # auto (TransformerEngine for RoPE when installed, else SDPA) | sdpa | te | flash (flash-attn
    # kernels in the local layers, ALiBi by its slopes: no seq x seq bias; GPU with flash-attn)
    attention_backend: str = "auto"
    fusions: str = "auto"                    # auto: megatron-core's fused kernels on GPU | off

    def __post_init__(self):
        from stack_common.config import Checks

        c = Checks()
        c.require(self.position_embedding_type in ("rope", "alibi"),
                  f"model.position_embedding_type={self.position_embedding_type!r} must be rope or alibi")
        if c.require(self.num_attention_heads > 0, "model.num_attention_heads must be > 0"):
            c.require(self.hidden_size % self.num_attention_heads == 0,
                      f"model.hidden_size={self.hidden_size} is not divisible by "
                      f"model.num_attention_heads={self.num_attention_heads}")
            c.require(self.num_attention_heads % self.query_groups == 0,
                      f"model.num_query_groups={self.num_query_groups} does not divide "
                      f"model.num_attention_heads={self.num_attention_heads}")
        c.require(self.attention_backend in ("auto", "sdpa", "te", "flash"),
                  f"model.attention_backend={self.attention_backend!r} must be auto, sdpa, te or flash")
        c.require(self.fusions in ("auto", "off"), f"model.fusions={self.fusions!r} must be auto or off")
        c.require(self.z_loss_coeff >= 0, f"model.z_loss_coeff={self.z_loss_coeff} must be >= 0")
        c.raise_if_any()

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def query_groups(self) -> int:
        return self.num_query_groups or self.num_attention_heads


def padded_vocab_size(vocab_size: int, tp: int = 1, multiple: int = 128) -> int:
    """Vocabulary rounded up to a multiple of `multiple x tp` (each TP rank gets whole blocks)."""
    step = multiple * tp
    return -(-vocab_size // step) * step


def on_cuda() -> bool:
    return torch.cuda.is_available()


def have_transformer_engine() -> bool:
    try:
        import transformer_engine  # noqa: F401
    except Exception:
        return False
    return torch.cuda.is_available()


def uses_transformer_engine(cfg: ModelConfig) -> bool:
    """TE for RoPE models on GPU when installed; ALiBi always goes through SDPA with a bias."""
    if cfg.attention_backend in ("sdpa", "flash") or cfg.position_embedding_type == "alibi":
        return False
    if cfg.attention_backend == "te":
        if not have_transformer_engine():
            raise RuntimeError("attention_backend=te but TransformerEngine (with CUDA) is not available")
        return True
    return have_transformer_engine()


def have_grad_accumulation_kernel() -> bool:
    """apex's fused_weight_gradient_mlp_cuda, which megatron's own ColumnParallelLinear (our
    output layer, in both specs) requires when gradient-accumulation fusion is on."""
    return importlib.util.find_spec("fused_weight_gradient_mlp_cuda") is not None


def fusion_flags(cfg: ModelConfig) -> dict:
    """megatron-core's fused kernels, on GPU only (model.fusions=auto): bias-SwiGLU and
    bias-dropout-add (jit, no extra package); RoPE fusion only with TransformerEngine layers
    (TE's kernel); gradient-accumulation fusion with TE layers and apex's kernel (the output
    layer is megatron's own linear layer in both specs). Masked-softmax fusion is for megatron's
    own attention, which neither spec uses."""
    on = cfg.fusions == "auto" and on_cuda()
    te = on and uses_transformer_engine(cfg)
    return {"bias_activation_fusion": on, "bias_dropout_fusion": on, "masked_softmax_fusion": False,
            "apply_rope_fusion": te and cfg.position_embedding_type == "rope",
            "gradient_accumulation_fusion": te and have_grad_accumulation_kernel(),
            "persist_layer_norm": False}


def recompute_flags(recompute) -> dict:
    """parallel.recompute: false/none, selective (core attention recomputed in the backward:
    frees much only where attention keeps seq x seq scores; SDPA, flash and TE fused attention
    keep none, so there it frees little) or full/true (every layer)."""
    value = {True: "full", False: None, None: None, "none": None}.get(recompute, recompute)
    if value not in (None, "selective", "full"):
        raise ValueError(f"parallel.recompute={recompute!r} must be false, selective or full")
    if value == "full":
        return {"recompute_granularity": "full", "recompute_method": "uniform", "recompute_num_layers": 1}
    return {"recompute_granularity": value, "recompute_method": None, "recompute_num_layers": None}


def transformer_config(cfg: ModelConfig, *, tp: int = 1, pp: int = 1, vpp: Optional[int] = None,
                       dtype: torch.dtype = torch.float32, sequence_parallel: bool = False,
                       recompute=False):
    """megatron-core TransformerConfig for Baichuan 2: RMSNorm, SwiGLU, no biases, fp32 softmax.

    On CPU: CPU initialization and every fusion off (they need CUDA kernels)."""
    from megatron.core.transformer import TransformerConfig

    from pretrain.mcore_compat import transformer_config_kwargs

    cuda = on_cuda()
    if sequence_parallel and not cuda:
        raise ValueError("sequence parallel needs CUDA (and TransformerEngine norms)")
    return TransformerConfig(
        num_layers=cfg.num_layers,
        hidden_size=cfg.hidden_size,
        num_attention_heads=cfg.num_attention_heads,
        num_query_groups=cfg.query_groups,
        ffn_hidden_size=cfg.ffn_hidden_size,
        kv_channels=cfg.head_dim,
        normalization="RMSNorm",
        layernorm_epsilon=cfg.norm_epsilon,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=False,
        hidden_dropout=cfg.hidden_dropout,
        attention_dropout=cfg.attention_dropout,
        init_method_std=cfg.init_method_std,
        attention_softmax_in_fp32=True,
        apply_query_key_layer_scaling=False,
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        virtual_pipeline_model_parallel_size=vpp,
        sequence_parallel=sequence_parallel,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        use_cpu_initialization=not cuda,
        perform_initialization=True,
        **fusion_flags(cfg),
        calculate_per_token_loss=True,       # exact token mean over microbatches and DP ranks
        deallocate_pipeline_outputs=cuda,
        # gloo matches point-to-point messages by order: a batched send/recv pair between the
        # two ranks of a PP=2 ring can swap activations and gradients of the interleaved
        # schedule. The unbatched path orders sends and receives by rank parity.
        batch_p2p_comm=cuda,
        **recompute_flags(recompute),
        **transformer_config_kwargs(),
    )
