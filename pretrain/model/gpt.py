"""Baichuan 2 as a megatron-core GPTModel: the local (or TransformerEngine) layer spec with SDPA
attention and ALiBi, a NormHead output layer, one model chunk per (virtual) pipeline stage.
The definition only: data-parallel wrapping and the schedule hooks are `pretrain.parallelize`."""
from __future__ import annotations

import copy
from typing import Optional

import torch
import torch.nn.functional as F

from megatron.core import parallel_state as mpu
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.tensor_parallel import ColumnParallelLinear
from megatron.core.transformer.spec_utils import ModuleSpec

from .attention import SDPAttention
from .config import ModelConfig, padded_vocab_size, transformer_config, uses_transformer_engine


def layer_spec(cfg: ModelConfig) -> ModuleSpec:
    if uses_transformer_engine(cfg):
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec

        return get_gpt_layer_with_transformer_engine_spec()
    spec = copy.deepcopy(get_gpt_layer_local_spec(normalization="RMSNorm"))
    spec.submodules.self_attention.submodules.core_attention = ModuleSpec(
        module=SDPAttention, params={"alibi": cfg.position_embedding_type == "alibi",
                                     "flash": cfg.attention_backend == "flash"})
    return spec


def final_norm(cfg: ModelConfig) -> type:
    """The norm after the last layer. megatron's default picks apex's FusedLayerNorm whenever
    apex imports (without TE), and that asserts on RMSNorm: name it explicitly."""
    if uses_transformer_engine(cfg):
        from megatron.core.extensions.transformer_engine import TENorm

        return TENorm
    from megatron.core.transformer.torch_norm import WrappedTorchNorm

    return WrappedTorchNorm


def block_spec(cfg: ModelConfig, config, vp_stage: Optional[int] = None):
    """This (virtual) stage's layers with an explicit final norm."""
    from megatron.core.transformer.transformer_block import (TransformerBlockSubmodules,
                                                             get_num_layers_to_build)

    layers = get_num_layers_to_build(config, vp_stage=vp_stage)
    return TransformerBlockSubmodules(layer_specs=[layer_spec(cfg)] * layers, layer_norm=final_norm(cfg))


def layer_build(cfg: ModelConfig) -> dict:
    """How the layers are built, recorded in every checkpoint's meta.json: a TE checkpoint
    carries `_extra_state` entries a local one lacks (loading skips them either way)."""
    te = uses_transformer_engine(cfg)
    build = {"spec": "transformer_engine" if te else "local", "final_norm": final_norm(cfg).__name__,
             "core_attention": "TEDotProductAttention" if te else
             "flash_attn" if cfg.attention_backend == "flash" else SDPAttention.__name__}
    if te:
        import transformer_engine

        build["transformer_engine"] = getattr(transformer_engine, "__version__", "unknown")
    return build


class NormHeadLinear(ColumnParallelLinear):
    """Output layer whose weight rows (vocabulary entries) are divided by their L2 norm in every
    forward, training and evaluation. Each TP rank normalizes its own rows, no communication.
    The stored weight stays raw, so resuming training sees exactly what was trained."""

    def forward(self, input_, weight=None, runtime_gather_output=None):
        weight = self.weight if weight is None else weight
        return super().forward(input_, weight=F.normalize(weight, dim=-1),
                               runtime_gather_output=runtime_gather_output)


class BaichuanGPTModel(GPTModel):
    def __init__(self, cfg: ModelConfig, config, *, vocab_size: int, pre_process: bool,
                 post_process: bool, vp_stage: Optional[int] = None):
        super().__init__(
            config=config,
            transformer_layer_spec=block_spec(cfg, config, vp_stage),
            vocab_size=vocab_size,
            max_sequence_length=cfg.seq_length,
            pre_process=pre_process,
            post_process=post_process,
            parallel_output=True,
            share_embeddings_and_output_weights=not cfg.untie_embeddings_and_output_weights,
            position_embedding_type="rope" if cfg.position_embedding_type == "rope" else "none",
            rotary_base=cfg.rotary_base,
            vp_stage=vp_stage,
        )
        self.baichuan = cfg
        if post_process and cfg.normhead:
            # Same parameters and sharding as megatron's output layer; only forward differs.
            self.output_layer.__class__ = NormHeadLinear


def unwrap(module):
    """The BaichuanGPTModel inside DDP / Float16Module wrappers."""
    while not isinstance(module, BaichuanGPTModel) and hasattr(module, "module"):
        module = module.module
    return module


def build_model(cfg: ModelConfig, *, tp: int = 1, pp: int = 1, vpp: Optional[int] = None,
                dtype: torch.dtype = torch.float32, sequence_parallel: bool = False,
                recompute: bool = False) -> list:
    """This rank's model chunks, one per virtual pipeline stage (a list of 1 without
    interleaving), unwrapped: `pretrain.parallelize` wraps them for data-parallel training.
    Call after `pretrain.parallel.init_distributed(tp, pp, vpp)`."""
    assert mpu.get_tensor_model_parallel_world_size() == tp, "init_distributed was called with another tp"
    assert mpu.get_pipeline_model_parallel_world_size() == pp, "init_distributed was called with another pp"
    if sequence_parallel and not uses_transformer_engine(cfg):
        raise ValueError("sequence parallel needs TransformerEngine layers (RoPE models on GPU); "
                         "megatron-core's local RMSNorm does not support it")
    config = transformer_config(cfg, tp=tp, pp=pp, vpp=vpp, dtype=dtype,
                                sequence_parallel=sequence_parallel, recompute=recompute)
    vocab = padded_vocab_size(cfg.vocab_size, tp, cfg.make_vocab_size_divisible_by)
    chunks = []
    for stage in range(vpp or 1):
        vp_stage = stage if vpp else None
        chunk = BaichuanGPTModel(
            cfg, config, vocab_size=vocab,
            pre_process=mpu.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage),
            post_process=mpu.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage),
            vp_stage=vp_stage)
        if torch.cuda.is_available():
            chunk.cuda(torch.cuda.current_device())
        chunks.append(chunk)
    return chunks
