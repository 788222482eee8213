"""Baichuan 2 model pieces against plain PyTorch references written here: NormHead, max-z loss,
ALiBi slopes and bias, RoPE in fp32 under bf16, vocabulary padding, configs, state dict names,
NaN step skipping. Model computations run in one spawned rank (megatron-core on gloo)."""
import math

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from _dist_helpers import reference_run
from pretrain.model import ModelConfig, padded_vocab_size
from stack_common.config import config_dir, to_dataclass


@pytest.fixture(scope="module")
def checks():
    return reference_run()[0]["checks"]


# ----------------------------------------------------------------------------- configs

def load_model_config(name: str) -> ModelConfig:
    return to_dataclass(OmegaConf.load(config_dir() / "model" / f"{name}.yaml"), ModelConfig, where="model")


def parameter_count(cfg: ModelConfig) -> int:
    h, f = cfg.hidden_size, cfg.ffn_hidden_size
    per_layer = 4 * h * h + 3 * h * f + 2 * h
    return cfg.num_layers * per_layer + 2 * cfg.vocab_size * h + h


def test_baichuan2_configs_have_the_published_shapes():
    b7, b13 = load_model_config("baichuan2_7b"), load_model_config("baichuan2_13b")
    assert (b7.hidden_size, b7.num_layers, b7.num_attention_heads, b7.ffn_hidden_size) == (4096, 32, 32, 11008)
    assert (b13.hidden_size, b13.num_layers, b13.num_attention_heads, b13.ffn_hidden_size) == (5120, 40, 40, 13696)
    assert (b7.position_embedding_type, b13.position_embedding_type) == ("rope", "alibi")
    for cfg in (b7, b13):
        assert cfg.vocab_size == 125696 and cfg.seq_length == 4096 and cfg.norm_epsilon == 1e-6
        assert cfg.normhead and cfg.untie_embeddings_and_output_weights and cfg.z_loss_coeff == 2e-4
    assert 7.4e9 < parameter_count(b7) < 7.6e9          # "7B" counts 7.5B with untied embeddings
    assert 13.8e9 < parameter_count(b13) < 14.0e9


def test_tiny_configs_are_small_models_of_the_7b_and_13b_families():
    """Everything but the sizes is the full model's: position encoding, NormHead, z-loss, norm epsilon,
    untied embeddings, no dropout."""
    same = ("position_embedding_type", "normhead", "z_loss_coeff", "norm_epsilon",
            "untie_embeddings_and_output_weights", "hidden_dropout", "attention_dropout", "make_vocab_size_divisible_by")
    for tiny, full in (("tiny_rope", "baichuan2_7b"), ("tiny_alibi", "baichuan2_13b")):
        small, big = load_model_config(tiny), load_model_config(full)
        assert {k: getattr(small, k) for k in same} == {k: getattr(big, k) for k in same}, tiny
        assert parameter_count(small) < 2e6 and small.seq_length <= 256
    assert load_model_config("tiny_alibi").position_embedding_type == "alibi"


def test_vocab_padding_multiple_of_128_times_tp():
    assert [padded_vocab_size(125696, tp) for tp in (1, 2, 4, 8)] == [125696, 125696, 125952, 125952]
    assert padded_vocab_size(1000, 1) == 1024 and padded_vocab_size(1000, 8) == 1024
    assert padded_vocab_size(1025, 8) == 2048


def test_bad_model_config_lists_every_problem():
    from stack_common.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        ModelConfig(position_embedding_type="learned", hidden_size=66, num_attention_heads=4)
    assert len(err.value.problems) == 2
    assert "rope or alibi" in err.value.problems[0] and "not divisible" in err.value.problems[1]


# ----------------------------------------------------------------------------- ALiBi

def test_alibi_slopes_for_32_and_40_heads():
    from pretrain.model import alibi_slopes

    # 32 heads: 2^(-8/32), 2^(-16/32), ... ; 40 heads: those 32, then the odd 64-head slopes.
    expect32 = [0.5 ** (k / 4) for k in range(1, 33)]
    expect40 = expect32 + [0.5 ** (k / 8) for k in range(1, 16, 2)]
    assert alibi_slopes(32) == pytest.approx(expect32, rel=1e-12)
    assert alibi_slopes(40) == pytest.approx(expect40, rel=1e-12)
    assert alibi_slopes(40)[32] == pytest.approx(2 ** -0.125) and alibi_slopes(8)[0] == 0.5


def test_alibi_attention_matches_explicit_softmax(checks):
    case = checks["alibi"]
    q, k, v = (case[n].permute(1, 2, 0, 3) for n in ("q", "k", "v"))   # [b, heads, s, d]
    heads, s, d = q.shape[1], q.shape[2], q.shape[3]
    slopes = torch.tensor([2.0 ** (-8.0 * (h + 1) / heads) for h in range(heads)])
    i, j = torch.arange(s)[:, None], torch.arange(s)[None, :]
    bias = slopes[:, None, None] * (j - i).float()
    bias = bias.masked_fill(j > i, float("-inf"))
    probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d) + bias, dim=-1)
    expect = (probs @ v).permute(2, 0, 1, 3).reshape(s, q.shape[0], heads * d)
    torch.testing.assert_close(case["out"], expect, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- NormHead + max-z

def test_normhead_and_max_z_loss_match_plain_pytorch(checks):
    c = checks["normhead"]
    vocab, coeff = c["vocab"], c["coeff"]
    weight = c["weight"].clone().requires_grad_()
    hidden = c["hidden"].clone().requires_grad_()
    normed = weight[:vocab] / weight[:vocab].norm(dim=1, keepdim=True)     # padding rows unused
    logits = hidden.transpose(0, 1) @ normed.T                            # [b, s, vocab]
    mask = c["mask"]
    ce = F.cross_entropy(logits.reshape(-1, vocab), c["labels"].reshape(-1), reduction="none")
    z = logits.max(dim=-1).values.reshape(-1)
    lm = (ce * mask.reshape(-1)).sum()
    zsum = (z.square() * mask.reshape(-1)).sum()
    total = lm + coeff * zsum
    total.backward()
    assert c["lm"] == pytest.approx(lm.item(), rel=1e-6)
    assert c["z"] == pytest.approx(zsum.item(), rel=1e-6)
    assert c["total"] == pytest.approx(total.item(), rel=1e-6)
    assert c["max_logit"] == pytest.approx(logits.max().item(), rel=1e-6)
    torch.testing.assert_close(c["grad_hidden"], hidden.grad, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(c["grad_weight"][:vocab], weight.grad[:vocab], atol=1e-6, rtol=1e-5)
    assert torch.count_nonzero(c["grad_weight"][vocab:]) == 0             # padding gets no gradient


def test_normhead_keeps_the_stored_weight_raw(checks):
    c = checks["normhead"]
    assert torch.equal(c["weight_after"], c["weight"])
    assert not torch.allclose(c["weight"].norm(dim=1), torch.ones(c["weight"].shape[0]))


# ----------------------------------------------------------------------------- precision, names, faults

def test_rope_in_fp32_under_bf16(checks):
    b = checks["bf16"]
    assert b["param_dtype"] == "torch.bfloat16"
    assert b["freq_dtype"] == "torch.float32"
    assert b["distinct_positions"] == 4096          # bf16 positions would collide above 256
    diff = (b["logits32"] - b["logits16"]).abs().max().item()
    assert diff < 0.1 and diff > 0                  # bf16 tolerance, and bf16 really ran


def test_state_dict_uses_megatron_gpt_names(checks):
    keys = checks["keys"]
    layer0 = {k.split("layers.0.", 1)[1] for k in keys if k.startswith("decoder.layers.0.")}
    assert layer0 == {"input_layernorm.weight", "self_attention.linear_qkv.weight",
                      "self_attention.linear_proj.weight", "pre_mlp_layernorm.weight",
                      "mlp.linear_fc1.weight", "mlp.linear_fc2.weight"}
    assert {"embedding.word_embeddings.weight", "decoder.final_layernorm.weight",
            "output_layer.weight"} <= set(keys)
    assert len(keys) == 3 + 4 * 6


def test_non_finite_loss_skips_the_update(checks):
    n = checks["nan"]
    assert n["poisoned"]["skipped"] == 1 and math.isnan(n["poisoned"]["total_loss"])
    assert n["unchanged"]
    assert n["healthy"]["skipped"] == 0 and math.isfinite(n["healthy"]["grad_norm"]) and n["changed"]
    h = n["healthy"]
    assert h["total_loss"] == pytest.approx(h["lm_loss"] + h["z_loss"], rel=1e-12)


def test_gradient_clipping_matches_megatrons_optimizer_step(checks):
    """clip_grad > 0 and a gradient norm above it: our optimizer_step gives the parameters megatron's
    own optimizer.step() gives, and (SGD) the update is the unclipped one scaled by clip / norm."""
    c = checks["clip"]
    norm = c["ours"]["grad_norm"]
    assert norm > 4 * c["clip"] and c["ours"]["skipped"] == c["megatron"]["skipped"] == 0
    assert norm == pytest.approx(c["megatron"]["grad_norm"], rel=1e-6) == c["unclipped"]["grad_norm"]
    for ours, megatron in zip(c["after_ours"], c["after_megatron"]):
        torch.testing.assert_close(ours, megatron, atol=1e-7, rtol=1e-6)
    scale = c["clip"] / (norm + 1e-6)
    for before, clipped, unclipped in zip(c["before"], c["after_ours"], c["after_unclipped"]):
        torch.testing.assert_close(before - clipped, (before - unclipped) * scale, atol=1e-7, rtol=1e-4)
    moved = sum((b - a).square().sum() for b, a in zip(c["before"], c["after_ours"])).sqrt().item()
    assert moved == pytest.approx(c["lr"] * c["clip"], rel=1e-4)    # |update| = lr x clip: the clipped norm


class _RecordingOptimizer:
    """Answers the megatron optimizer calls that `optimizer_step` makes, and records them."""

    def __init__(self, grad_norm: float):
        from types import SimpleNamespace

        self.grad_norm, self.calls = grad_norm, []
        self.config = SimpleNamespace(clip_grad=0.0)

    def prepare_grads(self):
        self.calls.append("prepare_grads")
        return False

    def get_grad_norm(self):
        self.calls.append("get_grad_norm")
        return self.grad_norm

    def step_with_ready_grads(self):
        self.calls.append("step_with_ready_grads")
        return True

    def step(self):
        raise AssertionError("step() would copy the grads and all-reduce their norm again")


def test_optimizer_step_copies_grads_and_reduces_the_norm_once():
    from pretrain.step import optimizer_step

    healthy = _RecordingOptimizer(3.5)
    assert optimizer_step(healthy) == (True, 3.5)       # the norm, not 0.0, with clip_grad=0
    assert healthy.calls == ["prepare_grads", "get_grad_norm", "step_with_ready_grads"]
    exploded = _RecordingOptimizer(float("inf"))
    assert optimizer_step(exploded) == (False, float("inf"))
    assert exploded.calls == ["prepare_grads", "get_grad_norm"]
