"""Parallelization of the model definition for training: megatron-core's
DistributedDataParallel around each chunk (fp32 grad buffers, optional ZeRO-1 layout), and the
hooks megatron's pipeline schedules find on the model config."""
from __future__ import annotations

from typing import Optional

import torch

from pretrain.model import ModelConfig


def build_parallel_model(cfg: ModelConfig, *, tp: int = 1, pp: int = 1, vpp: Optional[int] = None,
                         dtype: torch.dtype = torch.float32, sequence_parallel: bool = False,
                         recompute: bool = False, distributed_optimizer: bool = False,
                         overlap_grad_reduce: Optional[bool] = None) -> list:
    """The model chunks of this rank wrapped for training. `distributed_optimizer` must match
    the optimizer's setting; `overlap_grad_reduce` (None: on GPU) overlaps the DP gradient
    reduction with the backward."""
    from pretrain.model import build_model

    chunks = build_model(cfg, tp=tp, pp=pp, vpp=vpp, dtype=dtype, sequence_parallel=sequence_parallel,
                         recompute=recompute)
    overlap = torch.cuda.is_available() if overlap_grad_reduce is None else overlap_grad_reduce
    config = chunks[0].config
    chunks = wrap_in_ddp(chunks, config, distributed_optimizer, overlap)
    wire_schedule_hooks(chunks, config, overlap)
    return chunks


def wrap_in_ddp(chunks: list, config, distributed_optimizer: bool, overlap_grad_reduce: bool = False) -> list:
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        overlap_grad_reduce=overlap_grad_reduce,
        use_distributed_optimizer=distributed_optimizer,
        check_for_nan_in_grad=False,
    )
    # Bucketing only for the first chunk, as megatron's trainer does.
    return [DistributedDataParallel(config=config, ddp_config=ddp_config, module=chunk,
                                    disable_bucketing=i > 0)
            for i, chunk in enumerate(chunks)]


def wire_schedule_hooks(chunks: list, config, overlap_grad_reduce: bool) -> None:
    """The pipeline schedules find these on the model config: grad all-reduce and the
    division by the number of loss tokens (calculate_per_token_loss) after the last backward;
    with overlap, grad sync is held back until the last microbatch of each chunk."""
    from megatron.core.distributed import finalize_model_grads

    config.finalize_model_grads_func = finalize_model_grads
    if overlap_grad_reduce:
        no_sync = [chunk.no_sync for chunk in chunks]
        config.no_sync_func = no_sync[0] if len(chunks) == 1 else no_sync
