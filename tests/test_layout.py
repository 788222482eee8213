"""checkpoints_tools.layout, tensor by tensor: the architecture read from a trainer's meta.json or an
HF-style config, HF layer names and blocks both ways, TP slices of every part, vocabulary padding,
NormHead folding. Small labelled tensors, so a swapped block shows as a wrong label."""
from __future__ import annotations

import pytest
import torch

from checkpoints_tools import layout as L
from stack_common.errors import UserError

TRAINER_META = {"vocab_size": 1000, "padded_vocab_size": 1024,
                "model": {"num_attention_heads": 4, "hidden_size": 8, "num_layers": 3, "ffn_hidden_size": 12,
                          "num_query_groups": 2, "vocab_size": 999, "seq_length": 64, "norm_epsilon": 1e-5,
                          "position_embedding_type": "ALiBi", "rotary_base": 500000.0}}


def test_arch_from_a_trainer_meta():
    arch = L.arch_from_meta(TRAINER_META)
    assert arch == L.Arch(num_layers=3, hidden_size=8, num_heads=4, num_query_groups=2, ffn_hidden_size=12,
                          vocab_size=1000, padded_vocab_size=1024, seq_length=64, norm_eps=1e-5,
                          position="alibi", rope_base=500000.0)
    assert arch.head_dim == 2 and arch.as_dict()["num_query_groups"] == 2


def test_arch_from_hf_names_and_defaults():
    hf = {"model": {"num_heads": 4, "hidden_size": 8, "num_hidden_layers": 3, "intermediate_size": 12,
                    "vocab_size": 999, "num_key_value_heads": None}}
    arch = L.arch_from_meta(hf)
    assert (arch.num_layers, arch.ffn_hidden_size, arch.vocab_size, arch.padded_vocab_size) == (3, 12, 999, 999)
    assert (arch.num_query_groups, arch.seq_length, arch.norm_eps, arch.position, arch.rope_base) == \
        (4, 4096, 1e-6, "rope", 10000.0)
    hf["model"].update(num_key_value_heads=1, max_position_embeddings=128, rms_norm_eps=1e-5, rope_theta=1e6,
                       position="rope")
    arch = L.arch_from_meta(hf)
    assert (arch.num_query_groups, arch.seq_length, arch.norm_eps, arch.rope_base) == (1, 128, 1e-5, 1e6)
    hf["model"]["layernorm_epsilon"] = 3e-6
    assert L.arch_from_meta(hf).norm_eps == 3e-6
    for key in ("position_embedding", "position"):       # the other spellings of the position encoding
        model = {k: v for k, v in hf["model"].items() if k != "position"}
        assert L.arch_from_meta({"model": {**model, key: "alibi"}}).position == "alibi", key


@pytest.mark.parametrize("drop,field", [("num_attention_heads", "model.num_attention_heads"),
                                        ("hidden_size", "model.hidden_size"), ("num_layers", "model.num_layers"),
                                        ("ffn_hidden_size", "model.ffn_hidden_size")])
def test_arch_names_the_missing_field(drop, field):
    meta = {"model": {k: v for k, v in TRAINER_META["model"].items() if k != drop}}
    with pytest.raises(UserError) as err:
        L.arch_from_meta(meta, where="run/meta.json")
    assert (err.value.problem, err.value.field, str(err.value.file)) == ("missing", field, "run/meta.json")


def test_arch_without_model_or_vocabulary_is_an_error():
    with pytest.raises(UserError) as err:
        L.arch_from_meta({"model": "7b"}, where="m.json")
    assert (err.value.problem, err.value.field, str(err.value.file)) == ("no model config recorded", "model", "m.json")
    with pytest.raises(UserError) as err:
        L.arch_from_meta({})
    assert str(err.value.file) == "meta.json"
    model = {k: v for k, v in TRAINER_META["model"].items() if k != "vocab_size"}
    with pytest.raises(UserError) as err:
        L.arch_from_meta({"model": model})
    assert err.value.field == "vocab_size"


def labelled(rows: int, cols: int, base: float = 0.0) -> torch.Tensor:
    """Row i holds base + i in every column."""
    return (base + torch.arange(float(rows)))[:, None].expand(rows, cols).clone()


def layer_parts(arch: L.Arch) -> dict:
    d, h, f = arch.head_dim, arch.hidden_size, arch.ffn_hidden_size
    return {"qkv": labelled((arch.num_heads + 2 * arch.num_query_groups) * d, h),
            "proj": labelled(h, h, 100), "fc1": labelled(2 * f, h, 200), "fc2": labelled(h, f, 300),
            "attn_norm": 400 + torch.arange(float(h)), "mlp_norm": 500 + torch.arange(float(h))}


@pytest.mark.parametrize("fmt", ["llama", "baichuan"])
def test_hf_layer_names_blocks_and_round_trip(fmt):
    arch = L.arch_from_meta(TRAINER_META)      # 4 heads in 2 groups of head_dim 2: qkv rows [q q k v] x 2
    parts = layer_parts(arch)
    named = dict(L.hf_layer_tensors(fmt, 7, parts, arch))
    p = "model.layers.7."
    attn = ["self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"] \
        if fmt == "llama" else ["self_attn.W_pack.weight"]
    assert list(named) == [p + n for n in attn + ["self_attn.o_proj.weight", "mlp.gate_proj.weight",
                                                 "mlp.up_proj.weight", "mlp.down_proj.weight",
                                                 "input_layernorm.weight", "post_attention_layernorm.weight"]]
    q_rows, k_rows, v_rows = [0, 1, 2, 3, 8, 9, 10, 11], [4, 5, 12, 13], [6, 7, 14, 15]
    if fmt == "llama":
        got = [named[p + f"self_attn.{n}_proj.weight"][:, 0].tolist() for n in "qkv"]
    else:
        got = [t[:, 0].tolist() for t in named[p + "self_attn.W_pack.weight"].split([8, 4, 4])]
    assert got == [q_rows, k_rows, v_rows]
    assert named[p + "mlp.gate_proj.weight"][:, 0].tolist() == [200 + i for i in range(12)]
    assert named[p + "mlp.up_proj.weight"][:, 0].tolist() == [212 + i for i in range(12)]
    for hf, ours in (("self_attn.o_proj.weight", "proj"), ("mlp.down_proj.weight", "fc2"),
                     ("input_layernorm.weight", "attn_norm"), ("post_attention_layernorm.weight", "mlp_norm")):
        assert torch.equal(named[p + hf], parts[ours]), hf
    back = L.megatron_layer_from_hf(fmt, 7, named.__getitem__, arch)
    assert back.keys() == parts.keys() and all(torch.equal(back[k], parts[k]) for k in parts)


@pytest.mark.parametrize("rank", [0, 1])
def test_tp_shard_of_every_part(rank):
    tp, h = 2, 4
    rows = labelled(8, h)                                   # qkv, embedding, output: rows split
    for part in ("qkv", "embedding", "output"):
        assert L.tp_shard(part, rows, rank, tp)[:, 0].tolist() == [4 * rank + i for i in range(4)], part
    cols = labelled(6, 4).T.contiguous()                    # proj, fc2: columns split, each row 0..5
    for part in ("proj", "fc2"):
        assert L.tp_shard(part, cols, rank, tp)[0].tolist() == [3 * rank + i for i in range(3)], part
    fc1 = labelled(8, h)                                    # [gate 0..3; up 4..7]: each split on its own
    assert L.tp_shard("fc1", fc1, rank, tp)[:, 0].tolist() == [2 * rank, 2 * rank + 1, 4 + 2 * rank, 5 + 2 * rank]
    for part in ("attn_norm", "mlp_norm", "final_norm"):
        assert L.tp_shard(part, rows, rank, tp) is rows
    with pytest.raises(KeyError, match="rotary"):
        L.tp_shard("rotary", rows, rank, tp)
    assert L.tp_shard("fc1", fc1, 0, 1) is fc1 and L.tp_shard("rotary", rows, 0, 1) is rows


def test_tp_shard_of_four_ranks():
    fc1 = labelled(16, 2)
    assert [L.tp_shard("fc1", fc1, r, 4)[:, 0].tolist() for r in range(4)] == \
        [[2 * r, 2 * r + 1, 8 + 2 * r, 9 + 2 * r] for r in range(4)]


def test_pad_and_strip_vocabulary():
    w = labelled(3, 2, 1)
    padded = L.pad_vocab(w, 5)
    assert padded.tolist() == [[1, 1], [2, 2], [3, 3], [0, 0], [0, 0]] and padded.dtype == w.dtype
    assert L.pad_vocab(w, 3) is w
    with pytest.raises(ValueError, match="vocabulary 3 exceeds padded size 2"):
        L.pad_vocab(w, 2)
    assert torch.equal(L.strip_vocab(padded, 3), w)


def test_normalize_rows_in_blocks_in_fp32():
    w = torch.tensor([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0], [0.0, -2.0], [6.0, 8.0]])
    out = L.normalize_rows(w, block_rows=2)          # blocks of 2, 2 and 1 rows
    expect = torch.tensor([[0.6, 0.8], [0.0, 0.0], [1.0, 0.0], [0.0, -1.0], [0.6, 0.8]])
    torch.testing.assert_close(out, expect, atol=1e-7, rtol=0)
    assert torch.equal(L.normalize_rows(w), out)
    big = torch.full((2, 4), 300.0, dtype=torch.bfloat16)   # 300^2 x 4 overflows nothing in fp32
    half = L.normalize_rows(big)
    assert half.dtype == torch.bfloat16 and half.float().tolist() == [[0.5] * 4] * 2
