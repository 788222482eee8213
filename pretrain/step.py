"""One training step through megatron-core's pipeline schedules: the forward step (batch ->
model -> Baichuan loss) and `train_step` (all microbatches of a global batch, then AdamW)."""
from __future__ import annotations

import math
from functools import partial

import torch

from pretrain.model.gpt import unwrap

def _device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def get_batch(data_iterator, model):
    """The microbatch dict (tokens, labels, loss_mask, position_ids) on the device, or None on
    chunks that neither embed nor compute the loss (they must not consume the iterator: every
    chunk of a rank may share one iterator)."""
    inner = unwrap(model)
    if not (inner.pre_process or inner.post_process):
        return None
    batch = next(data_iterator)
    return {k: torch.as_tensor(batch[k]).to(_device(), non_blocking=True)
            for k in ("tokens", "labels", "loss_mask", "position_ids", "attention_mask") if k in batch}


def forward_step(data_iterator, model):
    """forward_step_func for `get_forward_backward_func()`: returns (output, loss_func).

    The attention mask is causal (plus the ALiBi bias for ALiBi models), cut at document ends
    when the batch carries one (data.reset_attention_mask)."""
    batch = get_batch(data_iterator, model)
    tokens = batch["tokens"] if batch is not None else None
    position_ids = batch.get("position_ids") if batch is not None else None
    attention_mask = batch.get("attention_mask") if batch is not None else None
    if tokens is not None and position_ids is None:
        position_ids = torch.arange(tokens.shape[1], device=tokens.device).unsqueeze(0).expand_as(tokens)
    output = model(tokens, position_ids, attention_mask)
    if batch is None or not unwrap(model).post_process:
        return output, None
    cfg = unwrap(model).baichuan
    return output, partial(loss_func, batch["labels"], batch["loss_mask"], cfg.vocab_size, cfg.z_loss_coeff)


def loss_func(labels, loss_mask, vocab_size: int, z_loss_coeff: float, logits):
    """(summed loss, number of loss tokens, reporting sums): with calculate_per_token_loss the
    schedules sum over microbatches and grads are divided by the total token count."""
    from pretrain.model.loss import lm_loss_terms

    t = lm_loss_terms(logits, labels, loss_mask, vocab_size, z_loss_coeff)
    report = torch.stack([t["lm"], z_loss_coeff * t["z"], t["tokens"], t["max_logit"]]).detach()
    lm_mean = t["lm"] / t["tokens"].clamp(min=1)
    return t["total"], t["tokens"].to(torch.int), {"sums": report, "lm_loss": lm_mean}


def reduce_metrics(outputs: list) -> dict:
    """Token means over the global batch on every rank (sums over microbatches, DP ranks, and
    from the last pipeline stage to the others)."""
    from megatron.core import parallel_state as mpu

    sums = torch.zeros(3, dtype=torch.float64, device=_device())
    peak = torch.full((1,), float("-inf"), dtype=torch.float64, device=_device())
    for out in outputs or []:
        r = out["sums"].double()
        sums += r[:3]
        peak = torch.maximum(peak, r[3:4])
    for group in (mpu.get_data_parallel_group(), mpu.get_pipeline_model_parallel_group()):
        if torch.distributed.get_world_size(group) > 1:
            torch.distributed.all_reduce(sums, group=group)
            torch.distributed.all_reduce(peak, op=torch.distributed.ReduceOp.MAX, group=group)
    lm, z, tokens = sums.tolist()
    tokens = max(tokens, 1.0)
    return {"lm_loss": lm / tokens, "z_loss": z / tokens, "total_loss": (lm + z) / tokens,
            "max_logit": peak.item(), "tokens": int(sums[2].item())}


def optimizer_step(optimizer) -> tuple[bool, float]:
    """AdamW step unless the gradient norm is not finite (then grads are dropped).
    Returns (stepped, grad_norm), the norm taken before clipping.

    megatron's `optimizer.step()` would copy the grads and all-reduce their norm a second time
    after our finiteness check, so its pieces are called here, each once."""
    if optimizer.prepare_grads():       # inf/nan found by the fp16 loss scaler
        return False, float("nan")
    grad_norm = float(optimizer.get_grad_norm())
    if not math.isfinite(grad_norm):
        return False, grad_norm
    clip_grads(optimizer, grad_norm)
    return bool(optimizer.step_with_ready_grads()), grad_norm


def clip_grads(optimizer, grad_norm: float) -> None:
    """Scale the main grads of every (chained) optimizer by its clip_grad / grad_norm when below 1:
    the global norm over all of them, as `ChainedOptimizer.step()` does."""
    from megatron.core.optimizer import clip_grads as mcore_clip   # module attribute: patchable

    for part in getattr(optimizer, "chained_optimizers", [optimizer]):
        if getattr(part, "is_stub_optimizer", False) or part.config.clip_grad <= 0.0:
            continue
        params = part.get_parameters()
        if params:
            mcore_clip.clip_grad_by_total_norm_fp32(
                params, max_norm=part.config.clip_grad, total_norm=grad_norm,
                use_decoupled_grad=part.config.use_precision_aware_optimizer_no_fp8_or_ds_fp8)


def per_chunk(data_iterator, model_chunks: list):
    """The interleaved schedule wants one iterator per chunk; ours may share one (see get_batch)."""
    if len(model_chunks) > 1 and not isinstance(data_iterator, list):
        return [data_iterator] * len(model_chunks)
    return data_iterator


def train_step(model_chunks: list, optimizer, data_iterator, num_microbatches: int,
               micro_batch_size: int, seq_length: int) -> dict:
    """Forward and backward of `num_microbatches` microbatches (1F1B / interleaved / no-pipe
    schedule chosen by megatron-core), then one optimizer step.

    `data_iterator` yields batch dicts (one iterator, or one per model chunk). A non-finite loss
    or grad norm skips the update (`skipped` = 1). Returns lm_loss, z_loss (coeff x mean z^2),
    total_loss = lm_loss + z_loss, max_logit, grad_norm, tokens, skipped; same on every rank."""
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from megatron.core.utils import get_model_config

    config = get_model_config(model_chunks[0])
    config.grad_scale_func = optimizer.scale_loss
    for chunk in model_chunks:
        chunk.train()
        if hasattr(chunk, "zero_grad_buffer"):
            chunk.zero_grad_buffer()
    optimizer.zero_grad()
    outputs = get_forward_backward_func()(
        forward_step_func=forward_step, data_iterator=per_chunk(data_iterator, model_chunks),
            model=model_chunks,
        num_microbatches=num_microbatches, seq_length=seq_length,
        micro_batch_size=micro_batch_size, forward_only=False)
    metrics = reduce_metrics(outputs)
    stepped, grad_norm = False, float("nan")
    if math.isfinite(metrics["total_loss"]):
        stepped, grad_norm = optimizer_step(optimizer)
    metrics.update(grad_norm=grad_norm, skipped=int(not stepped))
    return metrics


def eval_step(model_chunks: list, data_iterator, num_microbatches: int, micro_batch_size: int,
              seq_length: int) -> dict:
    """Forward only over `num_microbatches`; the same metrics (no grad_norm)."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    for chunk in model_chunks:
        chunk.eval()
    with torch.no_grad():
        outputs = get_forward_backward_func()(
            forward_step_func=forward_step, data_iterator=per_chunk(data_iterator, model_chunks),
            model=model_chunks,
            num_microbatches=num_microbatches, seq_length=seq_length,
            micro_batch_size=micro_batch_size, forward_only=True)
    return reduce_metrics(outputs)
