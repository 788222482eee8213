"""Configuration of Baichuan 2 models exported by this project (loaded with trust_remote_code=True).

One class covers both position encodings of the family: `position_embedding="rope"` (7B) and
`"alibi"` (13B, Baichuan's slopes)."""
from transformers import PretrainedConfig


class BaichuanConfig(PretrainedConfig):
    model_type = "baichuan"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(self, vocab_size=125696, hidden_size=4096, intermediate_size=11008,
                 num_hidden_layers=32, num_attention_heads=32, hidden_act="silu",
                 max_position_embeddings=4096, model_max_length=None, rms_norm_eps=1e-6,
                 position_embedding="rope", rope_theta=10000.0, initializer_range=0.02,
                 use_cache=True, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                 tie_word_embeddings=False, **kwargs):
        if position_embedding not in ("rope", "alibi"):
            raise ValueError(f"position_embedding={position_embedding!r} must be 'rope' or 'alibi'")
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.model_max_length = model_max_length or max_position_embeddings
        self.rms_norm_eps = rms_norm_eps
        self.position_embedding = position_embedding
        self.rope_theta = rope_theta
        self.initializer_range = initializer_range
        self.use_cache = use_cache
        super().__init__(pad_token_id=pad_token_id, bos_token_id=bos_token_id,
                         eos_token_id=eos_token_id, tie_word_embeddings=tie_word_embeddings,
                         **kwargs)
