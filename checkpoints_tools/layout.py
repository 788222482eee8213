"""Key and tensor layout between megatron-core GPTModel checkpoints and Hugging Face formats.

Pure functions over tensors. Facts they encode:
- dist checkpoints hold *global* tensors, independent of the TP layout they were saved with;
  per-layer weights are stacked on a leading layer axis (`decoder.layers.<name>`) or keyed per
  layer (`decoder.layers.<N>.<name>`), depending on how the model was saved.
- `linear_qkv` rows are grouped per query group: [q heads of the group; k; v].
- `linear_fc1` is [gate; up] globally (megatron-core's SwiGLU factory stores the gate halves
  of all TP ranks first), or split into `linear_fc1.weight_w` / `_v`.
- Under TP, column-parallel weights split on dim 0, row-parallel ones (`linear_proj`,
  `linear_fc2`) on dim 1, `linear_fc1` splits gate and up separately, norms are replicated,
  and the vocabulary is padded to a multiple of 128 x TP.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from stack_common.errors import UserError


@dataclass(frozen=True)
class Arch:
    num_layers: int
    hidden_size: int
    num_heads: int
    num_query_groups: int
    ffn_hidden_size: int
    vocab_size: int
    padded_vocab_size: int
    seq_length: int
    norm_eps: float
    position: str            # "rope" | "alibi"
    rope_base: float = 10000.0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def as_dict(self) -> dict:
        return asdict(self)


def _first(d: dict, names, default=None):
    for name in names:
        if d.get(name) is not None:
            return d[name]
    return default


def arch_from_meta(meta: dict, where="meta.json") -> Arch:
    """The architecture recorded by the trainer (meta.json `model` = ModelConfig as a dict)."""
    model = meta.get("model")
    if not isinstance(model, dict):
        raise UserError("no model config recorded", file=where, field="model")
    heads = _first(model, ["num_attention_heads", "num_heads"])
    hidden = _first(model, ["hidden_size"])
    layers = _first(model, ["num_layers", "num_hidden_layers"])
    ffn = _first(model, ["ffn_hidden_size", "intermediate_size"])
    vocab = _first(meta, ["vocab_size"], _first(model, ["vocab_size"]))
    for name, value in [("model.num_attention_heads", heads), ("model.hidden_size", hidden),
                        ("model.num_layers", layers), ("model.ffn_hidden_size", ffn),
                        ("vocab_size", vocab)]:
        if value is None:
            raise UserError("missing", file=where, field=name)
    position = str(_first(model, ["position_embedding_type", "position_embedding", "position"], "rope"))
    return Arch(
        num_layers=int(layers), hidden_size=int(hidden), num_heads=int(heads),
        num_query_groups=int(_first(model, ["num_query_groups", "num_key_value_heads"], heads)),
        ffn_hidden_size=int(ffn), vocab_size=int(vocab),
        padded_vocab_size=int(_first(meta, ["padded_vocab_size"], vocab)),
        seq_length=int(_first(model, ["seq_length", "max_position_embeddings"], 4096)),
        norm_eps=float(_first(model, ["norm_epsilon", "layernorm_epsilon", "rms_norm_eps"], 1e-6)),
        position="alibi" if position.lower() == "alibi" else "rope",
        rope_base=float(_first(model, ["rotary_base", "rope_theta"], 10000.0)),
    )


# ----------------------------------------------------------------------------- megatron keys

LAYER_PARTS = {
    # our name          candidates in a megatron-core checkpoint (first found wins)
    "qkv": ["self_attention.linear_qkv.weight"],
    "proj": ["self_attention.linear_proj.weight"],
    "fc1": ["mlp.linear_fc1.weight"],
    "fc2": ["mlp.linear_fc2.weight"],
    "attn_norm": ["self_attention.linear_qkv.layer_norm_weight", "input_layernorm.weight"],
    "mlp_norm": ["mlp.linear_fc1.layer_norm_weight", "pre_mlp_layernorm.weight"],
}
EMBEDDING = "embedding.word_embeddings.weight"
FINAL_NORM = "decoder.final_layernorm.weight"
OUTPUT = "output_layer.weight"


# ----------------------------------------------------------------------------- qkv

def split_qkv(qkv: torch.Tensor, arch: Arch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Grouped megatron rows -> (q [heads*d, H], k [groups*d, H], v [groups*d, H])."""
    g, d = arch.num_query_groups, arch.head_dim
    per_group = arch.num_heads // g
    rows = qkv.view(g, per_group + 2, d, -1)
    q = rows[:, :per_group].reshape(g * per_group * d, -1)
    k = rows[:, per_group].reshape(g * d, -1)
    v = rows[:, per_group + 1].reshape(g * d, -1)
    return q, k, v


def merge_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, arch: Arch) -> torch.Tensor:
    """(q, k, v) -> megatron rows grouped per query group."""
    g, d = arch.num_query_groups, arch.head_dim
    per_group = arch.num_heads // g
    hidden = q.shape[-1]
    rows = torch.cat([q.reshape(g, per_group, d, hidden), k.reshape(g, 1, d, hidden),
                      v.reshape(g, 1, d, hidden)], dim=1)
    return rows.reshape(-1, hidden)


def w_pack(q, k, v) -> torch.Tensor:
    """Baichuan's packed projection: [all q rows; all k rows; all v rows]."""
    return torch.cat([q, k, v], dim=0)


def unpack_w_pack(packed: torch.Tensor, arch: Arch):
    return packed.split([arch.num_heads * arch.head_dim, arch.num_query_groups * arch.head_dim,
                         arch.num_query_groups * arch.head_dim], dim=0)


# ----------------------------------------------------------------------------- vocabulary, head

def strip_vocab(weight: torch.Tensor, vocab_size: int) -> torch.Tensor:
    return weight[:vocab_size]


def pad_vocab(weight: torch.Tensor, padded_vocab_size: int) -> torch.Tensor:
    """Padding rows: zeros for embeddings; for NormHead rows the trainer's normalization decides
    (a zero row normalizes to zero logits), and they never receive a target."""
    extra = padded_vocab_size - weight.shape[0]
    if extra < 0:
        raise ValueError(f"vocabulary {weight.shape[0]} exceeds padded size {padded_vocab_size}")
    return torch.cat([weight, weight.new_zeros(extra, weight.shape[1])]) if extra else weight


def normalize_rows(weight: torch.Tensor, block_rows: int = 8192) -> torch.Tensor:
    """NormHead folded into a plain linear head: each row divided by its L2 norm (in fp32).
    Idempotent, so a model loaded, saved and exported again keeps the same function.
    Done in row blocks so that the fp32 temporaries stay small next to a 125k-row head."""
    out = torch.empty_like(weight)
    for start in range(0, weight.shape[0], block_rows):
        w32 = weight[start:start + block_rows].float()
        out[start:start + block_rows] = w32 / w32.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return out


# ----------------------------------------------------------------------------- TP slicing

def tp_shard(part: str, full: torch.Tensor, rank: int, tp: int) -> torch.Tensor:
    """The slice of a global (TP-independent) megatron tensor held by TP rank `rank`."""
    if tp == 1 or part in ("attn_norm", "mlp_norm", "final_norm"):
        return full
    if part == "fc1":
        gate, up = full.chunk(2, dim=0)
        return torch.cat([gate.chunk(tp, dim=0)[rank], up.chunk(tp, dim=0)[rank]])
    if part in ("proj", "fc2"):
        return full.chunk(tp, dim=1)[rank]
    if part in ("qkv", "embedding", "output"):
        return full.chunk(tp, dim=0)[rank]
    raise KeyError(part)


# ----------------------------------------------------------------------------- HF formats

def hf_layer_tensors(fmt: str, layer: int, parts: dict[str, torch.Tensor], arch: Arch):
    """Megatron layer tensors (global) -> [(hf name, tensor)] for `llama` or `baichuan`."""
    p = f"model.layers.{layer}."
    q, k, v = split_qkv(parts["qkv"], arch)
    gate, up = parts["fc1"].chunk(2, dim=0)
    if fmt == "llama":
        attn = [(p + "self_attn.q_proj.weight", q), (p + "self_attn.k_proj.weight", k),
                (p + "self_attn.v_proj.weight", v)]
    else:
        attn = [(p + "self_attn.W_pack.weight", w_pack(q, k, v))]
    return attn + [
        (p + "self_attn.o_proj.weight", parts["proj"]),
        (p + "mlp.gate_proj.weight", gate),
        (p + "mlp.up_proj.weight", up),
        (p + "mlp.down_proj.weight", parts["fc2"]),
        (p + "input_layernorm.weight", parts["attn_norm"]),
        (p + "post_attention_layernorm.weight", parts["mlp_norm"]),
    ]


def megatron_layer_from_hf(fmt: str, layer: int, get, arch: Arch) -> dict[str, torch.Tensor]:
    """HF tensors (via `get(name)`) -> global megatron tensors of one layer."""
    p = f"model.layers.{layer}."
    if fmt == "llama":
        q, k, v = (get(p + f"self_attn.{n}_proj.weight") for n in "qkv")
    else:
        q, k, v = unpack_w_pack(get(p + "self_attn.W_pack.weight"), arch)
    return {
        "qkv": merge_qkv(q, k, v, arch),
        "proj": get(p + "self_attn.o_proj.weight"),
        "fc1": torch.cat([get(p + "mlp.gate_proj.weight"), get(p + "mlp.up_proj.weight")]),
        "fc2": get(p + "mlp.down_proj.weight"),
        "attn_norm": get(p + "input_layernorm.weight"),
        "mlp_norm": get(p + "post_attention_layernorm.weight"),
    }

