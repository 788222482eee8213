"""Language-model loss of Baichuan 2: vocab-parallel cross-entropy + max-z loss.

max-z loss = coeff x mean over tokens of z^2, z = the largest logit of the token over the whole
vocabulary. Under TP each rank holds a slice of the vocabulary: the maximum is taken across the
TP group and its gradient flows only to the one position (one rank) that holds it."""
from __future__ import annotations

import torch

from megatron.core import parallel_state, tensor_parallel


class _VocabParallelMax(torch.autograd.Function):
    """z = max over the full (TP-split) vocabulary of logits [..., vocab/tp] -> [...]."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, group) -> torch.Tensor:
        local_max, local_idx = logits.max(dim=-1)
        z = local_max.clone()
        world = torch.distributed.get_world_size(group) if group is not None else 1
        owner = None
        if world > 1:
            torch.distributed.all_reduce(z, op=torch.distributed.ReduceOp.MAX, group=group)
            rank = torch.distributed.get_rank(group)
            # Ties across ranks: the lowest rank holding the maximum owns the gradient.
            owner = torch.where(local_max == z, rank, world).to(torch.int32)
            torch.distributed.all_reduce(owner, op=torch.distributed.ReduceOp.MIN, group=group)
            owner = owner == rank
        ctx.save_for_backward(local_idx, owner if owner is not None else torch.ones_like(local_idx, dtype=torch.bool))
        ctx.shape, ctx.dtype = logits.shape, logits.dtype
        return z

    @staticmethod
    def backward(ctx, grad_z: torch.Tensor):
        local_idx, owner = ctx.saved_tensors
        grad = torch.zeros(ctx.shape, dtype=ctx.dtype, device=grad_z.device)
        grad.scatter_(-1, local_idx.unsqueeze(-1), (grad_z * owner).unsqueeze(-1).to(ctx.dtype))
        return grad, None


def vocab_parallel_max(logits: torch.Tensor) -> torch.Tensor:
    group = parallel_state.get_tensor_model_parallel_group() if parallel_state.model_parallel_is_initialized() else None
    return _VocabParallelMax.apply(logits, group)


def mask_vocab_padding(logits: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """-inf on the padded vocabulary rows of this rank's slice, so padding changes nothing."""
    local = logits.shape[-1]
    start = parallel_state.get_tensor_model_parallel_rank() * local
    keep = vocab_size - start
    if keep >= local:
        return logits
    columns = torch.arange(local, device=logits.device) >= max(keep, 0)
    return logits.masked_fill(columns, float("-inf"))


def lm_loss_terms(logits: torch.Tensor, labels: torch.Tensor, loss_mask: torch.Tensor,
                  vocab_size: int, z_loss_coeff: float) -> dict:
    """Sums over the microbatch's loss tokens (divide by `tokens` for means).

    logits [b, s, vocab/tp] (this rank's slice), labels and loss_mask [b, s].
    Returns total (differentiable), lm, z (detached sums), max_logit, tokens."""
    logits = mask_vocab_padding(logits.float(), vocab_size)
    mask = loss_mask.float()
    z = vocab_parallel_max(logits)   # before the cross-entropy, which edits logits in place
    ce = tensor_parallel.vocab_parallel_cross_entropy(logits, labels)
    lm_sum = (ce * mask).sum()
    z_sum = (z.square() * mask).sum()
    total = lm_sum + z_loss_coeff * z_sum if z_loss_coeff else lm_sum
    masked_z = z.detach().masked_fill(mask == 0, float("-inf"))
    return {"total": total, "lm": lm_sum.detach(), "z": z_sum.detach(),
            "max_logit": masked_z.max(), "tokens": mask.sum()}
