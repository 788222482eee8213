"""AdamW through megatron-core's optimizer wrappers, and the warmup + cosine schedule through
megatron-core's OptimizerParamScheduler."""
from __future__ import annotations

import torch

from pretrain.config import RunConfig


def megatron_optimizer_config(run: RunConfig, bf16: bool):
    from megatron.core.optimizer import OptimizerConfig as MCoreOptimizerConfig

    o = run.optimizer
    return MCoreOptimizerConfig(
        optimizer="adam",               # decoupled weight decay below makes it AdamW
        lr=o.lr,
        min_lr=o.min_lr,
        weight_decay=o.weight_decay,
        decoupled_weight_decay=True,
        adam_beta1=o.beta1,
        adam_beta2=o.beta2,
        adam_eps=o.eps,
        clip_grad=o.clip_grad,
        bf16=bf16,                      # bf16 model weights, fp32 master weights in the optimizer
        params_dtype=torch.bfloat16 if bf16 else torch.float32,
        use_distributed_optimizer=o.distributed,
    )


def no_decay_on_norms_and_biases():
    """Weight decay only on matrices: every 1-D parameter (RMSNorm weights) and bias gets none."""
    from megatron.core.optimizer import ParamKey, ParamPredicate
    from megatron.core.optimizer_param_scheduler import ParamGroupOverride

    one_dim = ParamPredicate(name="one_dim", fn=lambda param: param.dim() == 1)
    return {ParamKey(name="*.bias", predicate=one_dim): ParamGroupOverride(wd_mult=0.0)}


def build_optimizer(run: RunConfig, model_chunks: list, bf16: bool):
    from megatron.core.optimizer import get_megatron_optimizer

    return get_megatron_optimizer(megatron_optimizer_config(run, bf16), model_chunks,
                                  config_overrides=no_decay_on_norms_and_biases())


def build_scheduler(run: RunConfig, optimizer):
    """Linear warmup from 0 to the peak, then decay to min_lr; counted in optimizer steps."""
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    o = run.optimizer
    return OptimizerParamScheduler(
        optimizer,
        init_lr=0.0,
        max_lr=o.lr,
        min_lr=o.min_lr,
        lr_warmup_steps=o.warmup_iters,
        lr_decay_steps=o.decay_iters or run.training.train_iters,
        lr_decay_style=o.decay_style,
        start_wd=o.weight_decay,
        end_wd=o.weight_decay,
        wd_incr_steps=run.training.train_iters,
        wd_incr_style="constant",
    )


def current_lr(optimizer) -> float:
    from megatron.core.optimizer_param_scheduler import get_canonical_lr_for_logging

    lr = get_canonical_lr_for_logging(optimizer.param_groups)
    return float(lr if lr is not None else optimizer.param_groups[0]["lr"])
