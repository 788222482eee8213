"""The dry run: parameter counts and a per-rank memory estimate of a layout, without process
groups or a GPU (`training.dry_run=true`); bench/gpu_check.py compares it with measured peaks."""
from __future__ import annotations

import os
from dataclasses import dataclass

from pretrain.config import RunConfig, padded_vocab, use_bf16

GiB = 2**30


@dataclass
class Estimate:
    total_params: int
    embedding_params: int
    rank_params: float          # on the largest rank
    padded_vocab: int
    world: int
    dp: int
    bf16: bool
    state_bytes: float          # weights + fp32 grads + optimizer state, per rank
    activation_bytes: float     # per rank, with flash/fused attention (no s^2 term)
    logits_bytes: float         # last stage: one micro-batch's logits and loss copies

    @property
    def total_bytes(self) -> float:
        return self.state_bytes + self.activation_bytes + self.logits_bytes


def logits_bytes(seq: int, micro_batch: int, padded_vocab: int, tp: int, weight_bytes: int) -> float:
    """One micro-batch's logits on the last stage: the output layer's (weight dtype), their fp32
    copy for the loss and the fp32 cross-entropy buffer (softmax, then its gradient)."""
    return seq * micro_batch * padded_vocab * (weight_bytes + 4 + 4) / tp


def estimate(run: RunConfig, world: int | None = None) -> Estimate:
    m, p, t = run.model, run.parallel, run.training
    h, layers, vocab = m.hidden_size, m.num_layers, padded_vocab(run)
    ffn = getattr(m, "ffn_hidden_size", None) or 4 * h
    kv = getattr(m, "num_query_groups", None) or m.num_attention_heads
    per_layer = h * h * 2 + 2 * h * h * kv // m.num_attention_heads + 3 * h * ffn + 2 * h
    embed = vocab * h
    total = layers * per_layer + 2 * embed + h
    # The first stage holds the input embedding and the last the (untied) output layer: both at pp=1.
    per_rank = (layers // p.pp) * per_layer / p.tp + (2 if p.pp == 1 else 1) * embed / p.tp
    world = max(world or int(os.environ.get("WORLD_SIZE", "1")), p.tp * p.pp)
    dp = max(world // (p.tp * p.pp), 1)
    bf16 = use_bf16(run) or t.precision == "auto"   # plan for the GPU target (auto: bf16 there)
    weight_bytes = 2 if bf16 else 4
    grad_bytes = 4                                     # fp32 main grads
    optim_bytes = (12 if bf16 else 8) / (dp if run.optimizer.distributed else 1)
    seq, mbs = run.seq_length, t.micro_batch_size
    # Korthikanti et al.: 34*s*b*h bytes per layer with 16-bit activations (flash attention: no s^2 term).
    act = layers // p.pp * seq * mbs * h * 34 * (weight_bytes / 2) / p.tp * min(p.pp, t.global_batch_size)
    return Estimate(total_params=total, embedding_params=2 * embed, rank_params=per_rank, padded_vocab=vocab,
                    world=world, dp=dp, bf16=bf16, state_bytes=per_rank * (weight_bytes + grad_bytes + optim_bytes),
                    activation_bytes=act, logits_bytes=logits_bytes(seq, mbs, vocab, p.tp, weight_bytes))


def dry_run(run: RunConfig) -> int:
    """Print parameter counts and a per-rank memory estimate, without starting process groups."""
    e, p = estimate(run), run.parallel
    distributed = run.optimizer.distributed
    print(f"parameters: {e.total_params / 1e6:,.1f}M total ({(e.total_params - e.embedding_params) / 1e6:,.1f}M "
          f"without embeddings), padded vocabulary {e.padded_vocab}")
    print(f"layout: tp={p.tp} pp={p.pp} vpp={p.vpp} dp={e.dp} (world {e.world}); "
          f"{e.rank_params / 1e6:,.1f}M parameters on the largest rank")
    print(f"memory per rank (estimate): weights+grads+optimizer {e.state_bytes / GiB:.2f} GiB, "
          f"activations {e.activation_bytes / GiB:.2f} GiB, logits {e.logits_bytes / GiB:.2f} GiB, "
          f"total {e.total_bytes / GiB:.2f} GiB "
          f"({'bf16 + fp32 master' if e.bf16 else 'fp32'}{', distributed optimizer' if distributed else ''})")
    return 0
