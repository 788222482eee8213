"""pretrain.model.loss and pretrain.optim in the pytest process (a one-process gloo group for the
tensor-parallel cross-entropy), against plain PyTorch and hand-computed schedules. The spawned-rank
tests cover the same code under TP/PP; these make it measurable by mutation testing."""
from __future__ import annotations

import math
import os
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from pretrain.config import OptimizerConfig, TrainingConfig

VOCAB, PADDED = 12, 16


@pytest.fixture(scope="module")
def one_process_group():
    from megatron.core import parallel_state

    from pretrain.parallel import free_port

    saved = {k: os.environ.get(k) for k in ("MASTER_ADDR", "MASTER_PORT")}
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    torch.distributed.init_process_group("gloo", rank=0, world_size=1)
    parallel_state.initialize_model_parallel(1, 1)
    yield
    parallel_state.destroy_model_parallel()
    torch.distributed.destroy_process_group()
    for k, v in saved.items():
        os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def case(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 5, PADDED, generator=g) * 3
    logits[..., VOCAB:] = 50.0                  # padding rows: would dominate if not masked
    labels = torch.randint(0, VOCAB, (2, 5), generator=g)
    mask = (torch.rand(2, 5, generator=g) > 0.3).float()
    return logits, labels, mask


def test_loss_terms_match_plain_pytorch(one_process_group):
    from pretrain.model.loss import lm_loss_terms

    logits, labels, mask = case()
    ours = logits.clone().requires_grad_()
    terms = lm_loss_terms(ours, labels, mask, VOCAB, 0.1)
    terms["total"].backward()
    plain = logits[..., :VOCAB].clone().requires_grad_()
    ce = F.cross_entropy(plain.reshape(-1, VOCAB), labels.reshape(-1), reduction="none").reshape(2, 5)
    z = plain.max(dim=-1).values
    lm, zsum = (ce * mask).sum(), (z.square() * mask).sum()
    (lm + 0.1 * zsum).backward()
    assert terms["lm"].item() == pytest.approx(lm.item(), rel=1e-6)
    assert terms["z"].item() == pytest.approx(zsum.item(), rel=1e-6)
    assert terms["total"].item() == pytest.approx(lm.item() + 0.1 * zsum.item(), rel=1e-6)
    assert terms["max_logit"].item() == pytest.approx(z[mask > 0].max().item(), rel=1e-6)
    assert terms["tokens"].item() == mask.sum().item() == 6
    torch.testing.assert_close(ours.grad[..., :VOCAB], plain.grad, atol=1e-6, rtol=1e-5)
    assert torch.count_nonzero(ours.grad[..., VOCAB:]) == 0
    assert not terms["lm"].requires_grad and not terms["z"].requires_grad


def test_without_z_loss_the_total_is_the_lm_loss(one_process_group):
    from pretrain.model.loss import lm_loss_terms

    logits, labels, mask = case(1)
    terms = lm_loss_terms(logits.clone().requires_grad_(), labels, mask, VOCAB, 0.0)
    assert terms["total"].item() == terms["lm"].item() and terms["z"].item() > 0


def test_max_z_gradient_goes_to_the_maximum_only(one_process_group):
    from pretrain.model.loss import vocab_parallel_max

    logits = torch.tensor([[1.0, 4.0, 2.0], [5.0, -1.0, 0.0]], requires_grad=True)
    z = vocab_parallel_max(logits)
    assert z.tolist() == [4.0, 5.0]
    (z * torch.tensor([2.0, 3.0])).sum().backward()
    assert logits.grad.tolist() == [[0.0, 2.0, 0.0], [3.0, 0.0, 0.0]]


def test_vocabulary_padding_is_masked(one_process_group):
    from pretrain.model.loss import mask_vocab_padding

    logits = torch.ones(2, PADDED)
    masked = mask_vocab_padding(logits, VOCAB)
    assert torch.equal(masked[:, :VOCAB], logits[:, :VOCAB]) and torch.isinf(masked[:, VOCAB:]).all()
    assert (masked[:, VOCAB:] < 0).all() and torch.equal(logits, torch.ones(2, PADDED))   # input untouched
    assert mask_vocab_padding(logits, PADDED) is logits


def run_config(**optimizer) -> SimpleNamespace:
    fields = dict(lr=1e-3, min_lr=1e-4, beta1=0.8, beta2=0.9, eps=1e-6, weight_decay=0.05, clip_grad=0.7,
                  warmup_iters=4, decay_iters=None, decay_style="cosine", distributed=True)
    fields.update(optimizer)
    return SimpleNamespace(optimizer=OptimizerConfig(**fields), training=TrainingConfig(train_iters=20))


@pytest.mark.parametrize("bf16", [True, False])
def test_megatron_optimizer_config_carries_every_setting(bf16):
    from pretrain.optim import megatron_optimizer_config

    c = megatron_optimizer_config(run_config(), bf16)
    assert (c.optimizer, c.lr, c.min_lr, c.weight_decay, c.adam_beta1, c.adam_beta2, c.adam_eps, c.clip_grad) == \
        ("adam", 1e-3, 1e-4, 0.05, 0.8, 0.9, 1e-6, 0.7)
    assert c.decoupled_weight_decay is True and c.use_distributed_optimizer is True and c.bf16 is bf16
    assert c.params_dtype == (torch.bfloat16 if bf16 else torch.float32)


def test_no_weight_decay_on_one_dimensional_parameters():
    from pretrain.optim import no_decay_on_norms_and_biases

    (key, override), = no_decay_on_norms_and_biases().items()
    assert override["wd_mult"] == 0.0 and key.name == "*.bias"
    predicate = key.predicate
    assert predicate.fn(torch.zeros(4)) is True and predicate.fn(torch.zeros(4, 4)) is False


def lr_schedule(run, steps: int) -> list[float]:
    from pretrain.optim import build_scheduler, current_lr

    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=run.optimizer.lr)
    scheduler = build_scheduler(run, optimizer)
    lrs = [current_lr(optimizer)]
    for _ in range(steps):
        scheduler.step(1)
        lrs.append(current_lr(optimizer))
    assert optimizer.param_groups[0]["weight_decay"] == run.optimizer.weight_decay   # constant
    return lrs


def test_warmup_then_cosine_to_min_lr():
    lrs = lr_schedule(run_config(), 24)
    assert lrs[:5] == pytest.approx([0.0, 2.5e-4, 5e-4, 7.5e-4, 1e-3], rel=1e-9)    # linear, 4 steps
    for step in range(4, 21):                                                   # cosine over steps 4..20
        progress = (step - 4) / 16
        assert lrs[step] == pytest.approx(1e-4 + 0.5 * 9e-4 * (1 + math.cos(math.pi * progress)), rel=1e-9), step
    assert lrs[20:] == pytest.approx([1e-4] * 5, rel=1e-9)                      # min_lr after decay


def test_decay_iters_and_linear_style():
    lrs = lr_schedule(run_config(decay_iters=12, decay_style="linear", warmup_iters=2), 14)
    assert lrs[2] == pytest.approx(1e-3) and lrs[7] == pytest.approx(1e-3 - 9e-4 * 5 / 10)
    assert lrs[12:] == pytest.approx([1e-4] * 3)


def test_build_optimizer_hands_megatron_the_config_chunks_and_overrides(monkeypatch):
    """The wiring only (megatron's optimizer itself runs in the spawned-rank tests): what
    get_megatron_optimizer receives."""
    import megatron.core.optimizer as mcore_optimizer

    from pretrain.optim import build_optimizer, megatron_optimizer_config

    calls = []
    monkeypatch.setattr(mcore_optimizer, "get_megatron_optimizer",
                        lambda config, chunks, **kwargs: calls.append((config, chunks, kwargs)) or "built")
    run, chunks = run_config(), [torch.nn.Linear(2, 2)]
    assert build_optimizer(run, chunks, bf16=True) == "built"
    (config, got, kwargs), = calls
    assert got is chunks and config == megatron_optimizer_config(run, True) and config.bf16 is True
    (key, override), = kwargs.pop("config_overrides").items()
    assert kwargs == {} and key.name == "*.bias" and override["wd_mult"] == 0.0
