"""The Hugging Face side: configs for both formats, lazy tensor access to HF directories
(safetensors or the `pytorch_model*.bin` shards of the released Baichuan 2 models), and the
tokenizer files that go with an export."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from pretrain.checkpointing import TOKENIZER_DIR  # noqa: F401  (re-exported for the tools)
from stack_common.atomic import atomic_write_json, read_json_file
from stack_common.errors import UserError

from .layout import Arch

TEMPLATES = Path(__file__).parent / "hf_templates"
BAICHUAN_FILES = ("configuration_baichuan.py", "modeling_baichuan.py")
FORMATS = ("llama", "baichuan")


# ----------------------------------------------------------------------------- writing configs

def write_config(out_dir: Path, fmt: str, arch: Arch, dtype: torch.dtype, special: dict) -> None:
    dtype_name = str(dtype).removeprefix("torch.")
    common = dict(vocab_size=arch.vocab_size, hidden_size=arch.hidden_size,
                  intermediate_size=arch.ffn_hidden_size, num_hidden_layers=arch.num_layers,
                  num_attention_heads=arch.num_heads, max_position_embeddings=arch.seq_length,
                  rms_norm_eps=arch.norm_eps, hidden_act="silu", tie_word_embeddings=False,
                  **special)
    if fmt == "llama":
        from transformers import LlamaConfig

        config = LlamaConfig(num_key_value_heads=arch.num_query_groups, rope_theta=arch.rope_base,
                             attention_bias=False, mlp_bias=False, **common)
        config.architectures = ["LlamaForCausalLM"]
    else:
        from .hf_templates.configuration_baichuan import BaichuanConfig

        config = BaichuanConfig(position_embedding=arch.position, rope_theta=arch.rope_base,
                                model_max_length=arch.seq_length, **common)
        config.architectures = ["BaichuanForCausalLM"]
        config.auto_map = {"AutoConfig": "configuration_baichuan.BaichuanConfig",
                           "AutoModelForCausalLM": "modeling_baichuan.BaichuanForCausalLM"}
        for name in BAICHUAN_FILES:
            shutil.copyfile(TEMPLATES / name, out_dir / name)
    config.dtype = dtype_name
    config.save_pretrained(out_dir)
    generation = {"bos_token_id": special["bos_token_id"], "eos_token_id": special["eos_token_id"],
                  "pad_token_id": special["pad_token_id"], "do_sample": False,
                  "max_new_tokens": 64, "repetition_penalty": 1.0}
    atomic_write_json(out_dir / "generation_config.json", generation)


# ----------------------------------------------------------------------------- reading HF dirs

class WeightFiles:
    """A model directory's weight shards by tensor name, opened lazily: safetensors with safe_open,
    `pytorch_model-*.bin` (released Baichuan 2 checkpoints) memory-mapped, so only the tensors asked
    for are read. `max_open` shards stay open (None: all; 1 for streaming a series)."""

    INDEXES = (("model.safetensors.index.json", "model.safetensors"),
               ("pytorch_model.bin.index.json", "pytorch_model.bin"))

    def __init__(self, model_dir: str | Path, max_open: int | None = None):
        self.dir = Path(model_dir)
        self.max_open = max_open
        self._open: dict[str, object] = {}
        self.weight_map = self._weight_map()

    def _weight_map(self) -> dict[str, str]:
        for index_name, single in self.INDEXES:
            if (self.dir / index_name).is_file():
                return read_json_file(self.dir / index_name).get("weight_map") or {}
            if (self.dir / single).is_file():
                return dict.fromkeys(self.handle(single).keys(), single)
        raise UserError("no weights found", file=self.dir,
                        expected="model.safetensors[.index.json] or pytorch_model.bin[.index.json]")

    def handle(self, file: str):
        if file not in self._open:
            path = self.dir / file
            if not path.is_file():
                raise UserError("weight file listed in the index is missing", file=path)
            try:
                if file.endswith(".safetensors"):
                    from safetensors import safe_open

                    handle = safe_open(str(path), framework="pt")
                else:  # memory-mapped: only the tensors asked for are paged in
                    handle = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
            except Exception as err:
                raise UserError(f"cannot read weights: {err}", file=path) from err
            if self.max_open is not None and len(self._open) >= self.max_open:
                self._open.clear()
            self._open[file] = handle
        return self._open[file]

    def handle_of(self, name: str):
        file = self.weight_map.get(name)
        if file is None:
            raise UserError("tensor missing from the checkpoint", file=self.dir, field=name)
        return self.handle(file)

    def get(self, name: str) -> torch.Tensor:
        handle = self.handle_of(name)
        return handle.get_tensor(name) if hasattr(handle, "get_tensor") else handle[name]

    def names(self) -> list[str]:
        return sorted(self.weight_map)


class HFCheckpoint(WeightFiles):
    """Lazy, tensor-by-tensor access to a Hugging Face model directory."""

    def __init__(self, path: str | Path, position: str | None = None):
        self.dir = Path(path)
        config_path = self.dir / "config.json"
        if not config_path.is_file():
            raise UserError("not a Hugging Face model directory: config.json is missing", file=self.dir)
        try:
            self.config = json.loads(config_path.read_text())
        except ValueError as err:
            raise UserError(f"not valid JSON: {err}", file=config_path) from err
        self.format = detect_format(self.config, config_path)
        self.position_source = position_source(self.config, self.dir, position)
        self.arch = arch_from_hf_config(self.config, config_path, self.position_source[0])
        super().__init__(self.dir)


def detect_format(config: dict, where) -> str:
    model_type = config.get("model_type")
    if model_type in FORMATS:
        return model_type
    raise UserError(f"unsupported model_type {model_type!r}", file=where, field="model_type",
                    expected="llama or baichuan")


def arch_from_hf_config(config: dict, where, position: str | None = None) -> Arch:
    """The architecture of config.json; `position` (rope | alibi) when config.json has no field."""
    try:
        heads = int(config["num_attention_heads"])
        hidden = int(config["hidden_size"])
        layers = int(config["num_hidden_layers"])
        ffn = int(config["intermediate_size"])
        vocab = int(config["vocab_size"])
    except KeyError as err:
        raise UserError("missing", file=where, field=err.args[0]) from err
    if config.get("model_type") == "llama":
        position = "rope"
        rope = config.get("rope_parameters") or {}
        base = rope.get("rope_theta", config.get("rope_theta", 10000.0))
        if rope.get("rope_type", "default") != "default" or config.get("rope_scaling"):
            raise UserError("RoPE scaling is not supported", file=where, field="rope_scaling")
    else:
        position = position_field(config) or position
        if position is None:
            raise UserError("no position embedding type", file=where, field="position_embedding",
                            expected="--position rope|alibi")
        base = config.get("rope_theta", 10000.0)
    seq = config.get("max_position_embeddings") or config.get("model_max_length") or 4096
    return Arch(num_layers=layers, hidden_size=hidden, num_heads=heads,
                num_query_groups=int(config.get("num_key_value_heads") or heads),
                ffn_hidden_size=ffn, vocab_size=vocab, padded_vocab_size=vocab,
                seq_length=int(seq), norm_eps=float(config.get("rms_norm_eps", 1e-6)),
                position=position, rope_base=float(base))


# Released Baichuan 2 configs carry no position field; the modeling code they ship tells:
# the 13B code builds ALiBi masks, the 7B code has rotary embeddings.
POSITIONS = ("rope", "alibi")
MODELING_FILE = "modeling_baichuan.py"
ALIBI_MARKERS = ("_get_interleave", "_gen_alibi_mask")
ROTARY_MARKERS = ("RotaryEmbedding", "apply_rotary_pos_emb")


def position_field(config: dict) -> str | None:
    value = config.get("position_embedding") or config.get("position_embedding_type")
    return str(value).lower() if value else None


def position_from_code(hf_dir: Path) -> str | None:
    """alibi or rope from the shipped modeling_baichuan.py; None when absent or ambiguous."""
    path = hf_dir / MODELING_FILE
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8", errors="replace")
    alibi = any(marker in text for marker in ALIBI_MARKERS)
    rotary = any(marker in text for marker in ROTARY_MARKERS)
    if alibi == rotary:
        return None
    return "alibi" if alibi else "rope"


def position_source(config: dict, hf_dir: Path, given: str | None) -> tuple[str, str]:
    """(position type, where it came from): config.json's field, else --position, else the code.
    --position may fill a gap but never contradict config.json or the shipped code."""
    where = hf_dir / "config.json"
    if given is not None and given not in POSITIONS:
        raise UserError(f"unknown position type {given!r}", field="--position", expected="rope or alibi")
    if config.get("model_type") == "llama":
        if given == "alibi":
            raise UserError("llama checkpoints use RoPE", file=where, field="--position",
                            expected="no --position, or --position rope")
        return "rope", "llama format"
    field = position_field(config)
    if field is not None:
        if field not in POSITIONS:
            raise UserError(f"unknown position type {field!r}", file=where, field="position_embedding",
                            expected="rope or alibi")
        if given is not None and given != field:
            raise UserError(f"--position {given} contradicts config.json's {field}", file=where,
                            field="position_embedding", expected=f"--position {field} or none")
        return field, "config.json position_embedding"
    code = position_from_code(hf_dir)
    if given is not None and code is not None and given != code:
        raise UserError(f"--position {given} contradicts {MODELING_FILE}'s {code} code",
                        file=hf_dir / MODELING_FILE, field="--position", expected=f"--position {code} or none")
    if given is not None:
        return given, "--position"
    if code is not None:
        return code, MODELING_FILE
    raise UserError("no position_embedding field, and no modeling_baichuan.py with either ALiBi "
                    f"({'/'.join(ALIBI_MARKERS)}) or rotary ({'/'.join(ROTARY_MARKERS)}) code to tell "
                    "the position type", file=where, field="position_embedding",
                    expected="--position rope|alibi")


# ----------------------------------------------------------------------------- tokenizer

TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json", "tokenization_baichuan.py")


def copy_tokenizer(src: Path | None, out_dir: Path, model_max_length: int | None = None) -> list[str]:
    """Put the tokenizer next to the weights. `src` is a HF tokenizer directory, or a
    SentencePiece .model that the tokenizer package converts (its `export_hf_tokenizer`).
    `model_max_length` (the training sequence length) is set where the tokenizer has none."""
    if src is None:
        return []
    src = Path(src)
    if src.is_dir():
        copied = []
        for name in TOKENIZER_FILES:
            if (src / name).is_file():
                shutil.copyfile(src / name, out_dir / name)
                copied.append(name)
        if not copied:
            raise UserError("no tokenizer files found", file=src, expected=", ".join(TOKENIZER_FILES))
        complete_tokenizer_config(out_dir / "tokenizer_config.json", model_max_length)
        return copied
    if not src.is_file():
        raise UserError("tokenizer not found", file=src)
    from tokenizer_training.export_hf import export_hf_tokenizer

    staging = out_dir / "tokenizer.staging"   # inside the export's temp dir: removed with it on failure
    export_hf_tokenizer(src, staging, model_max_length=model_max_length)
    copied = sorted(p.name for p in staging.iterdir())
    for name in copied:
        (staging / name).rename(out_dir / name)
    staging.rmdir()
    return copied


def complete_tokenizer_config(path: Path, model_max_length: int | None) -> None:
    """A copied tokenizer_config.json keeps its values; what it lacks is added: model_max_length,
    and split_special_tokens (control-symbol strings in text are plain text, as SentencePiece
    encoded the training data: tokenizer_training/export_hf.py)."""
    if not path.is_file():
        return
    config = read_json_file(path)
    added = {"split_special_tokens": True}
    if model_max_length is not None:
        added["model_max_length"] = int(model_max_length)
    if any(key not in config for key in added):
        atomic_write_json(path, {**config, **{k: v for k, v in added.items() if k not in config}})
