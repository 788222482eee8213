"""Baichuan 2 for `transformers`, written by this project (loaded with trust_remote_code=True).

Architecture: RMSNorm, SwiGLU MLP, no biases, untied embeddings, RoPE (7B) or ALiBi with
Baichuan's slopes (13B), and NormHead: logits use the row-normalized output weight. The stored
`lm_head.weight` is never overwritten by its normalized copy, so the model can be trained
further and saved again unchanged.

Weight names follow the released Baichuan 2 checkpoints: `self_attn.W_pack` holds
[all q rows; all k rows; all v rows]."""
import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .configuration_baichuan import BaichuanConfig

try:  # transformers 5: init functions that spare the tensors from_pretrained has loaded
    from transformers.initialization import normal_, ones_
except ImportError:  # 4.x initializes before loading
    from torch.nn.init import normal_, ones_


def cache_field(output_cls) -> str:
    """The KV cache's name in model outputs: `cache` from transformers 5.24 on (where generate()
    also passes `cache=` to forward instead of `past_key_values=`), `past_key_values` before."""
    return "cache" if "cache" in output_cls.__dataclass_fields__ else "past_key_values"


def model_output(output_cls, cache, **fields):
    return output_cls(**fields, **{cache_field(output_cls): cache})


def alibi_slopes(num_heads: int) -> torch.Tensor:
    """Geometric slopes for a power-of-two head count; otherwise those of the nearest lower power
    of two followed by every other slope of the next power of two (40 heads: 32 + 8)."""
    def power_of_two(n):
        start = 2.0 ** (-(2.0 ** -(math.log2(n) - 3)))
        return [start * start ** i for i in range(n)]

    if math.log2(num_heads).is_integer():
        return torch.tensor(power_of_two(num_heads), dtype=torch.float32)
    lower = 2 ** math.floor(math.log2(num_heads))
    extra = alibi_slopes(2 * lower)[0::2][: num_heads - lower]
    return torch.cat([torch.tensor(power_of_two(lower), dtype=torch.float32), extra])


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x):
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype)


def rotary_cos_sin(positions: torch.Tensor, head_dim: int, base: float):
    """cos/sin in fp32 whatever the model dtype (bf16 positions collide above 256). Computed on
    the fly, not kept in a buffer: non-persistent buffers are not restored by from_pretrained."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float32, device=positions.device) / head_dim
    inv_freq = 1.0 / (base ** exponents)
    freqs = positions.float()[..., None] * inv_freq
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rotary(x, cos, sin):
    # x: [b, h, s, d]; cos/sin: [b, s, d]
    cos, sin = cos[:, None].to(x.dtype), sin[:, None].to(x.dtype)
    return x * cos + rotate_half(x) * sin


class Attention(nn.Module):
    def __init__(self, config: BaichuanConfig, layer_idx: int):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // self.num_heads
        self.layer_idx = layer_idx
        self.W_pack = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=False)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)

    def forward(self, hidden, bias, rotary, past_key_values: Optional[Cache]):
        b, s, _ = hidden.shape
        q, k, v = self.W_pack(hidden).split(hidden.shape[-1], dim=-1)
        q, k, v = (t.view(b, s, self.num_heads, self.head_dim).transpose(1, 2) for t in (q, k, v))
        if rotary is not None:
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        if past_key_values is not None:
            k, v = past_key_values.update(k, v, self.layer_idx)
        if bias is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=q.shape[2] > 1)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        return self.o_proj(out.transpose(1, 2).reshape(b, s, -1))


class MLP(nn.Module):
    def __init__(self, config: BaichuanConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, config: BaichuanConfig, layer_idx: int):
        super().__init__()
        self.self_attn = Attention(config, layer_idx)
        self.mlp = MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, hidden, bias, rotary, past_key_values):
        hidden = hidden + self.self_attn(self.input_layernorm(hidden), bias, rotary, past_key_values)
        return hidden + self.mlp(self.post_attention_layernorm(hidden))


class NormHead(nn.Module):
    """Output layer on row-normalized weights (each vocabulary row divided by its L2 norm)."""

    def __init__(self, hidden_size: int, vocab_size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(vocab_size, hidden_size))

    def forward(self, hidden):
        return F.linear(hidden, F.normalize(self.weight, dim=-1))


class BaichuanPreTrainedModel(PreTrainedModel):
    config_class = BaichuanConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = False
    _no_split_modules = ["DecoderLayer"]

    @torch.no_grad()
    def _init_weights(self, module):
        # transformers' init functions skip tensors that from_pretrained has already loaded
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, NormHead, nn.Embedding)):
            normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, RMSNorm):
            ones_(module.weight)


class BaichuanModel(BaichuanPreTrainedModel):
    def __init__(self, config: BaichuanConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def attention_bias(self, attention_mask, q_len, past_len, device):
        """None for plain causal RoPE attention; otherwise an additive float bias: causal mask (-inf above the diagonal), ALiBi slope x (j - i), and
        padding (a large negative, so fully padded rows stay finite). [heads or 1, q, kv]
        without padding, the layout the trainer's attention uses; [b, heads or 1, q, kv] with it."""
        no_padding = attention_mask is None or bool(attention_mask.all())
        if self.config.position_embedding == "rope" and no_padding and (past_len == 0 or q_len == 1):
            return None  # plain causal attention (or one new token that sees everything)
        kv_len = past_len + q_len
        i = torch.arange(past_len, kv_len, device=device, dtype=torch.float32)[:, None]
        j = torch.arange(kv_len, device=device, dtype=torch.float32)[None, :]
        distance = j - i
        if self.config.position_embedding == "alibi":
            slopes = alibi_slopes(self.config.num_attention_heads).to(device)
            bias = slopes[:, None, None] * distance
        else:
            bias = torch.zeros_like(distance)[None]
        bias = bias.masked_fill(distance > 0, float("-inf"))
        if not no_padding:
            padded = ~attention_mask[:, None, None, -kv_len:].bool()
            bias = bias[None].masked_fill(padded, torch.finfo(torch.float32).min)
        return bias

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, use_cache=None, cache=None, **kwargs):
        past_key_values = cache if cache is not None else past_key_values
        hidden = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        batch, q_len = hidden.shape[:2]
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=self.config)
        past_len = past_key_values.get_seq_length() if past_key_values is not None else 0
        if position_ids is None:
            position_ids = torch.arange(past_len, past_len + q_len, device=hidden.device)[None]
            position_ids = position_ids.expand(batch, -1)
        rotary = (rotary_cos_sin(position_ids, self.head_dim, self.config.rope_theta)
                  if self.config.position_embedding == "rope" else None)
        bias = self.attention_bias(attention_mask, q_len, past_len, hidden.device)
        for layer in self.layers:
            hidden = layer(hidden, bias, rotary, past_key_values)
        return model_output(BaseModelOutputWithPast, past_key_values if use_cache else None,
                            last_hidden_state=self.norm(hidden))


class BaichuanForCausalLM(BaichuanPreTrainedModel, GenerationMixin):
    def __init__(self, config: BaichuanConfig):
        super().__init__(config)
        self.model = BaichuanModel(config)
        self.lm_head = NormHead(config.hidden_size, config.vocab_size)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, labels=None, use_cache=None, logits_to_keep=0, cache=None, **kwargs):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask,
                         position_ids=position_ids, past_key_values=past_key_values,
                         inputs_embeds=inputs_embeds, use_cache=use_cache, cache=cache)
        hidden = out.last_hidden_state
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                   labels[:, 1:].reshape(-1), ignore_index=-100)
        return model_output(CausalLMOutputWithPast, getattr(out, cache_field(BaseModelOutputWithPast)),
                            loss=loss, logits=logits)
