"""import-hf: a Hugging Face checkpoint (llama or baichuan format, including the released
Baichuan 2 layout) -> a megatron-core dist checkpoint for a chosen TP/PP, to continue training.

The model is built with the trainer's own code at the target layout (one process per TP x PP
rank, gloo on CPU); each rank copies in only its slices of the HF tensors, read lazily, and the
ranks save together with dist_checkpointing. NormHead weights are imported as stored."""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import torch

from stack_common.atomic import atomic_write_json, sha256_file
from stack_common.errors import UserError
from stack_common.logging import get_logger

from . import layout as L
from .hf_io import TOKENIZER_DIR, TOKENIZER_FILES, HFCheckpoint

log = get_logger("checkpoints_tools.import")

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_LAYER_PARAM = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")


def model_config_for(arch: L.Arch, overrides: dict | None = None):
    """The trainer's ModelConfig describing an HF architecture."""
    from pretrain.model import ModelConfig

    groups = None if arch.num_query_groups == arch.num_heads else arch.num_query_groups
    fields = dict(name="imported", num_layers=arch.num_layers, hidden_size=arch.hidden_size,
                  num_attention_heads=arch.num_heads, num_query_groups=groups,
                  ffn_hidden_size=arch.ffn_hidden_size, vocab_size=arch.vocab_size,
                  seq_length=arch.seq_length, norm_epsilon=arch.norm_eps,
                  position_embedding_type=arch.position, rotary_base=arch.rope_base)
    fields.update(overrides or {})
    known = set(ModelConfig.__dataclass_fields__)
    return ModelConfig(**{k: v for k, v in fields.items() if k in known})


def import_hf(hf_dir: str | Path, out_dir: str | Path, tp: int = 1, pp: int = 1, vpp: int | None = None,
              dtype: str = "fp32", overwrite: bool = False, tokenizer: str | None = None,
              position: str | None = None) -> Path:
    """Write `out_dir` (an iter_0000000-style checkpoint directory with meta.json).
    `position` (rope | alibi) is needed only when neither config.json nor the shipped
    modeling_baichuan.py tells the position type."""
    hf = HFCheckpoint(hf_dir, position)
    arch = hf.arch
    out_dir = Path(out_dir)
    problems = []
    if out_dir.exists() and not overwrite:
        raise UserError("target directory exists", file=out_dir, expected="a new path or --overwrite")
    if arch.num_heads % tp or arch.num_query_groups % tp:
        problems.append(f"--tp {tp} does not divide heads={arch.num_heads}/groups={arch.num_query_groups}")
    if arch.num_layers % (pp * (vpp or 1)):
        problems.append(f"--pp {pp} x --vpp {vpp or 1} does not divide num_layers={arch.num_layers}")
    if dtype not in DTYPES:
        problems.append(f"--dtype {dtype!r} must be one of {', '.join(DTYPES)}")
    if problems:
        from stack_common.errors import ConfigError
        raise ConfigError(problems)
    _check_hf_shapes(hf)
    tok_model = tokenizer_model(hf, Path(tokenizer) if tokenizer else None)
    tmp = out_dir.with_name(f".{out_dir.name}.import.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        from pretrain.parallel import run_local

        run_local(tp * pp, _import_rank, str(hf_dir), str(tmp), tp, pp, vpp, dtype, position)
        tok = carry_tokenizer(hf, tok_model, tmp, out_dir) if tok_model else None
        atomic_write_json(tmp / "meta.json", import_meta(hf, tp, pp, vpp, tok))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info(f"imported {hf_dir} ({hf.format}, {hf.arch.position} from {hf.position_source[1]}) -> "
             f"{out_dir} at tp={tp} pp={pp} vpp={vpp}")
    return out_dir


def _check_hf_shapes(hf: HFCheckpoint) -> None:
    """Tensors must match config.json before any process starts."""
    a = hf.arch
    fmt = hf.format
    expect = {"model.embed_tokens.weight": (a.vocab_size, a.hidden_size),
              "lm_head.weight": (a.vocab_size, a.hidden_size), "model.norm.weight": (a.hidden_size,)}
    qkv = (a.num_heads + 2 * a.num_query_groups) * a.head_dim
    last = a.num_layers - 1
    if fmt == "baichuan":
        expect[f"model.layers.{last}.self_attn.W_pack.weight"] = (qkv, a.hidden_size)
    else:
        expect[f"model.layers.{last}.self_attn.k_proj.weight"] = (a.num_query_groups * a.head_dim, a.hidden_size)
    expect[f"model.layers.{last}.mlp.gate_proj.weight"] = (a.ffn_hidden_size, a.hidden_size)
    for name, shape in expect.items():
        got = tuple(hf.get(name).shape)
        if got != shape:
            raise UserError(f"tensor has shape {got} but config.json implies {shape}",
                            file=hf.dir / "config.json", field=name)


# ----------------------------------------------------------------------------- per rank

def _import_rank(rank: int, world: int, hf_dir: str, tmp: str, tp: int, pp: int, vpp, dtype: str,
                 position):
    from pretrain import cpu_compat

    cpu_compat.apply_if_needed()
    from megatron.core import parallel_state

    from pretrain import parallel
    from pretrain.checkpointing import TrainState, full_state
    from pretrain.mcore_compat import dist_save
    from pretrain.model import build_model, padded_vocab_size, unwrap

    parallel.init_distributed(tp, pp, vpp, seed=1234, backend="gloo")
    try:
        hf = HFCheckpoint(hf_dir, position)
        torch_dtype = DTYPES[dtype]
        cfg = model_config_for(hf.arch)
        chunks = build_model(cfg, tp=tp, pp=pp, vpp=vpp, dtype=torch_dtype)
        padded = padded_vocab_size(hf.arch.vocab_size, tp)
        tp_rank = parallel_state.get_tensor_model_parallel_rank()
        with torch.no_grad():
            for chunk in chunks:
                fill_chunk(unwrap(chunk), hf, tp_rank, tp, padded)
        sd = full_state(chunks, None, None, TrainState(), is_loading=False)
        dist_save(sd, tmp)
        torch.distributed.barrier()
    finally:
        parallel.destroy()


def fill_chunk(model, hf: HFCheckpoint, tp_rank: int, tp: int, padded: int) -> None:
    """Copy this rank's slices of the HF weights into every parameter of one model chunk."""
    fmt, arch = hf.format, hf.arch
    layers = getattr(getattr(model, "decoder", None), "layers", [])
    cache: dict[int, dict[str, torch.Tensor]] = {}
    for name, param in model.named_parameters():
        match = _LAYER_PARAM.match(name)
        if match:
            local, suffix = int(match.group(1)), match.group(2)
            layer = layers[local].layer_number - 1
            if layer not in cache:
                cache.clear()
                cache[layer] = L.megatron_layer_from_hf(fmt, layer, hf.get, arch)
            part = next((p for p, names in L.LAYER_PARTS.items() if suffix in names), None)
            if part is None:
                raise UserError("the trainer's model has a parameter this tool cannot fill",
                                field=name)
            full = cache[layer][part]
        elif name == L.EMBEDDING:
            part, full = "embedding", L.pad_vocab(hf.get("model.embed_tokens.weight"), padded)
        elif name == L.OUTPUT:
            part, full = "output", L.pad_vocab(hf.get("lm_head.weight"), padded)
        elif name == L.FINAL_NORM:
            part, full = "final_norm", hf.get("model.norm.weight")
        else:
            raise UserError("the trainer's model has a parameter this tool cannot fill", field=name)
        shard = L.tp_shard(part, full, tp_rank, tp)
        if tuple(shard.shape) != tuple(param.shape):
            raise UserError(f"slice has shape {tuple(shard.shape)}, the model expects "
                            f"{tuple(param.shape)}", file=hf.dir, field=name)
        param.copy_(shard)


def tokenizer_model(hf: HFCheckpoint, given: Path | None) -> Path | None:
    """The tokenizer.model to carry (`given`, else the HF dir's), checked before any weight is
    converted: a SentencePiece model with no more pieces than the model's vocabulary."""
    from tokenizer_training.export_hf import load_sentencepiece

    if given is not None and not given.is_file():
        raise UserError("no such file" if not given.exists() else "a directory, not a file", file=given,
                        field="--tokenizer", expected="a SentencePiece tokenizer.model")
    model = given or hf.dir / "tokenizer.model"
    if not model.is_file():
        log.warning(f"no tokenizer.model in {hf.dir} and no --tokenizer: the checkpoint carries no tokenizer")
        return None
    pieces = load_sentencepiece(model).get_piece_size()
    if pieces > hf.arch.vocab_size:
        raise UserError(f"the tokenizer has {pieces} pieces, more than the model's vocab_size "
                        f"{hf.arch.vocab_size}", file=model, field="--tokenizer" if given else None,
                        expected="the model's own tokenizer")
    return model


def carry_tokenizer(hf: HFCheckpoint, model: Path, tmp: Path, out_dir: Path) -> dict:
    """Copy tokenizer.model (`model`) into CHECKPOINT/tokenizer/, with the HF dir's tokenizer
    config files when `model` is the HF dir's tokenizer.model (same sha256): they describe that
    one. Returns meta.json's `tokenizer` entry (path after publishing)."""
    from tokenizer_training.export_hf import load_sentencepiece

    sp = load_sentencepiece(model)
    dest = tmp / TOKENIZER_DIR
    dest.mkdir()
    shutil.copyfile(model, dest / "tokenizer.model")
    own = hf.dir / "tokenizer.model"
    same = own.is_file() and sha256_file(own) == sha256_file(model)
    extras = [name for name in TOKENIZER_FILES if name != "tokenizer.model" and (hf.dir / name).is_file()]
    if extras and not same:
        log.info(f"--tokenizer differs from {own}: {', '.join(extras)} not carried (they describe that one)")
    files = ["tokenizer.model"] + (extras if same else [])
    for name in files[1:]:
        shutil.copyfile(hf.dir / name, dest / name)
    return {"model": str((out_dir / TOKENIZER_DIR / "tokenizer.model").resolve()),
            "sha256": sha256_file(dest / "tokenizer.model"), "vocab_size": sp.get_piece_size(),
            "eod_id": sp.eos_id(), "bos_id": sp.bos_id(), "pad_id": 0, "dir": TOKENIZER_DIR,
            "files": files, "source": str(model.resolve())}


def import_meta(hf: HFCheckpoint, tp, pp, vpp, tok: dict | None) -> dict:
    from dataclasses import asdict

    from pretrain.model import layer_build, padded_vocab_size

    cfg = model_config_for(hf.arch)
    return {"iteration": 0, "consumed_samples": 0, "consumed_tokens": 0, "tp": tp, "pp": pp,
            "vpp": vpp, "dp": 1, "model": asdict(cfg), "layer_build": layer_build(cfg),
            "vocab_size": hf.arch.vocab_size,
            "padded_vocab_size": padded_vocab_size(hf.arch.vocab_size, tp), "tokenizer": tok, "keep": True,
            "train_state": {"iteration": 0, "consumed_samples": 0, "consumed_tokens": 0},
            "architecture": hf.arch.as_dict(),
            "imported_from": {"path": str(hf.dir.resolve()), "format": hf.format,
                              "position_from": hf.position_source[1]}}
