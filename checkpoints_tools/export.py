"""export-hf: a megatron-core dist checkpoint (any TP/PP layout) -> a Hugging Face directory.

Streaming: tensors are read one (layer slice) at a time from the torch_dist files, converted
and handed to the sharded safetensors writer, so peak memory stays near one shard plus one
tensor, never the model."""
from __future__ import annotations

import time
from pathlib import Path

import torch

from stack_common.atomic import atomic_dir, atomic_path, atomic_write_json, sha256_file
from stack_common.errors import UserError
from stack_common.logging import get_logger
from stack_common.progress import progress

from . import layout as L
from .dist_reader import META, DistCheckpointReader, read_json_file
from .hf_io import FORMATS, TOKENIZER_DIR, copy_tokenizer, write_config
from .safetensors_out import ShardedSafetensorsWriter

log = get_logger("checkpoints_tools.export")

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
EXPORT_META = "export_meta.json"
# The output rows' L2 norms before NormHead's normalization (which the exported lm_head no
# longer shows): read by `dynamics`. Not a `model*` file, so loaders and converters skip it.
ROW_NORMS_FILE = "normhead_row_norms.safetensors"
ROW_NORMS_KEY = "lm_head.row_norms"


def trained_with_normhead(meta: dict) -> bool:
    """model.normhead from the run's config (NormHead is on in every Baichuan 2 model)."""
    model = meta.get("model") if isinstance(meta.get("model"), dict) else {}
    return bool(model.get("normhead", True))


def row_norms(weight: torch.Tensor, block_rows: int = 8192) -> torch.Tensor:
    """L2 norm of each row in fp32, a block of rows at a time (no fp32 copy of a 125k-row head)."""
    return torch.cat([weight[i:i + block_rows].float().norm(dim=-1)
                      for i in range(0, weight.shape[0], block_rows)])


def head_for_export(head: torch.Tensor, normhead: bool, norms: torch.Tensor | None = None) -> torch.Tensor:
    """lm_head as both formats store it: rows normalized when the model was trained with
    NormHead (llama has no NormHead; llama.cpp's Baichuan converter and the official Baichuan 2
    code would get the same logits, since normalizing twice changes nothing). Rows already of
    unit norm (an export imported back) are kept bit for bit."""
    if not normhead:
        return head
    norms = row_norms(head) if norms is None else norms
    if (norms - 1).abs().max().item() <= 4 * torch.finfo(head.dtype).eps:
        return head
    return L.normalize_rows(head)


class MegatronCheckpoint:
    """The model tensors of one dist checkpoint under our part names, read lazily."""

    def __init__(self, ckpt_dir: str | Path):
        self.dir = Path(ckpt_dir)
        self.reader = DistCheckpointReader(self.dir)
        self.meta = read_json_file(self.dir / META)
        self.arch = L.arch_from_meta(self.meta, where=self.dir / META)
        self._check_shapes()

    def _layer_key(self, part: str, layer: int) -> tuple[str, int | None]:
        for name in L.LAYER_PARTS[part]:
            if f"decoder.layers.{name}" in self.reader:
                return f"decoder.layers.{name}", layer
            if f"decoder.layers.{layer}.{name}" in self.reader:
                return f"decoder.layers.{layer}.{name}", None
        raise UserError(f"no tensor for {part} of layer {layer}", file=self.dir,
                        field=" | ".join(f"decoder.layers[.{layer}].{n}" for n in L.LAYER_PARTS[part]))

    def layer_part(self, part: str, layer: int) -> torch.Tensor:
        if part == "fc1" and self._split_fc1(layer):
            key = self._split_fc1(layer)
            idx = layer if key.startswith("decoder.layers.mlp") else None
            return torch.cat([self.reader.read(key + "_w", idx), self.reader.read(key + "_v", idx)])
        key, idx = self._layer_key(part, layer)
        return self.reader.read(key, idx)

    def _split_fc1(self, layer: int) -> str | None:
        for key in ("decoder.layers.mlp.linear_fc1.weight", f"decoder.layers.{layer}.mlp.linear_fc1.weight"):
            if key + "_w" in self.reader:
                return key
        return None

    def layer(self, layer: int) -> dict[str, torch.Tensor]:
        return {part: self.layer_part(part, layer) for part in L.LAYER_PARTS}

    def read(self, key: str) -> torch.Tensor:
        return self.reader.read(key)

    def nbytes(self, key: str) -> int:
        shape, dtype = self.reader.shapes[key], self.reader.dtypes[key]
        return int(torch.Size(shape).numel()) * torch.tensor([], dtype=dtype).element_size()

    def _check_shapes(self) -> None:
        """The recorded config must describe the tensors: a mismatch is named, not mis-exported."""
        a, r = self.arch, self.reader
        where = self.dir / META
        expect = {
            L.EMBEDDING: (a.padded_vocab_size, a.hidden_size),
            L.OUTPUT: (a.padded_vocab_size, a.hidden_size),
            L.FINAL_NORM: (a.hidden_size,),
        }
        for key, shape in expect.items():
            if key not in r:
                raise UserError("tensor missing from the checkpoint", file=self.dir, field=key)
            if r.shapes[key] != shape:
                raise UserError(f"checkpoint tensor has shape {r.shapes[key]} but the config "
                                f"implies {shape}", file=where, field=key,
                                expected="meta.json model/vocab to match the weights")
        qkv_rows = (a.num_heads + 2 * a.num_query_groups) * a.head_dim
        key, idx = self._layer_key("qkv", 0)
        shape = r.shapes[key][1:] if idx is not None else r.shapes[key]
        if shape != (qkv_rows, a.hidden_size):
            raise UserError(f"linear_qkv has shape {shape} but heads={a.num_heads}, "
                            f"groups={a.num_query_groups}, hidden={a.hidden_size} imply "
                            f"{(qkv_rows, a.hidden_size)}", file=where, field="model")
        if idx is not None and r.shapes[key][0] != a.num_layers:
            raise UserError(f"checkpoint has {r.shapes[key][0]} layers, config says {a.num_layers}",
                            file=where, field="model.num_layers")
        if idx is None:
            self._layer_key("qkv", a.num_layers - 1)  # raises if the last layer is missing


def export_hf(ckpt_dir: str | Path, out_dir: str | Path, fmt: str = "llama", dtype: str = "auto",
              tokenizer: str | Path | None = None, overwrite: bool = False,
              max_shard_bytes: int = 1 << 30, extra_meta: dict | None = None,
              with_optimizer: bool = False) -> Path:
    """Convert one checkpoint; returns the output directory (published atomically)."""
    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}", field="--format", expected=" or ".join(FORMATS))
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise UserError("target directory exists", file=out_dir, expected="a new path or --overwrite")
    ckpt = MegatronCheckpoint(ckpt_dir)
    arch = ckpt.arch
    if fmt == "llama" and arch.position != "rope":
        raise UserError("the llama format has no ALiBi", file=ckpt.dir / META,
                        field="model.position_embedding_type", expected="--format baichuan for ALiBi models")
    if fmt == "baichuan" and arch.num_query_groups != arch.num_heads:
        raise UserError("the baichuan format has multi-head attention only", file=ckpt.dir / META,
                        field="model.num_query_groups", expected="--format llama for GQA models")
    normhead = trained_with_normhead(ckpt.meta)
    if fmt == "baichuan" and not normhead:
        raise UserError("the baichuan format always applies NormHead, but this model was trained without it",
                        file=ckpt.dir / META, field="model.normhead", expected="--format llama")
    target = DTYPES.get(dtype) or ckpt.reader.dtypes[L.EMBEDDING]
    tokenizer = tokenizer or tokenizer_from_meta(ckpt.meta, ckpt.dir)
    start = time.time()
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        writer = ShardedSafetensorsWriter(tmp, max_shard_bytes)
        for name, tensor in progress(_hf_tensors(ckpt, fmt, writer.make_room, normhead, tmp),
                                     total=3 + arch.num_layers * (9 if fmt == "llama" else 7),
                                     desc=f"export {ckpt.dir.name}", unit="tensor"):
            writer.add(name, tensor.to(target))
        files = writer.close()
        write_config(tmp, fmt, arch, target, special_tokens(ckpt.meta))
        tokenizer_files = copy_tokenizer(Path(tokenizer) if tokenizer else None, tmp,
                                         model_max_length=arch.seq_length)
        atomic_write_json(tmp / EXPORT_META, {
            "source": str(Path(ckpt_dir).resolve()), "format": fmt, "dtype": str(target),
            "iteration": ckpt.meta.get("iteration"), "consumed_tokens": ckpt.meta.get("consumed_tokens"),
            "consumed_samples": ckpt.meta.get("consumed_samples"),
            "saved_layout": {k: ckpt.meta.get(k) for k in ("tp", "pp", "vpp", "dp")},
            "arch": arch.as_dict(), "files": files, "tokenizer_files": tokenizer_files,
            "normhead": ("lm_head rows stored normalized; raw row norms in " + ROW_NORMS_FILE)
                        if normhead else "none (model.normhead: false): lm_head as trained",
            **(extra_meta or {})})
        write_training_state(tmp, ckpt, with_optimizer)
    mb = writer.total_bytes / 2**20
    took = time.time() - start
    log.info(f"exported {ckpt.dir} -> {out_dir} ({fmt}, {len(files)} file(s), {mb:.1f} MB, "
             f"{took:.1f}s, {mb / max(took, 1e-9):.1f} MB/s)")
    return out_dir


TRAINING_STATE = "training_state.json"
OPTIMIZER_DIR = "megatron_checkpoint"


def write_training_state(out_dir: Path, ckpt: MegatronCheckpoint, with_optimizer: bool) -> None:
    """OUT/training_state.json: the moment of the checkpoint (provenance.training_state). With
    `with_optimizer`, the whole checkpoint (optimizer, schedule, data position, RNG) is copied to
    OUT/megatron_checkpoint: `python -m pretrain checkpoint.load=OUT/megatron_checkpoint ...`
    continues from the export exactly."""
    import shutil

    from .provenance import training_state

    state = training_state(ckpt.dir, ckpt.meta)
    if with_optimizer:
        shutil.copytree(ckpt.dir, out_dir / OPTIMIZER_DIR)
    state["optimizer_state"] = OPTIMIZER_DIR if with_optimizer else None
    atomic_write_json(out_dir / TRAINING_STATE, state)


def _hf_tensors(ckpt: MegatronCheckpoint, fmt: str, make_room, normhead: bool, out_dir: Path):
    """Yield (hf name, tensor) in file order: embeddings, layers, final norm, head.
    `make_room(nbytes)` is called before each large read (the vocabulary-sized tensors); the
    head's raw row norms go to `out_dir`/ROW_NORMS_FILE."""
    arch = ckpt.arch
    make_room(ckpt.nbytes(L.EMBEDDING))
    yield "model.embed_tokens.weight", L.strip_vocab(ckpt.read(L.EMBEDDING), arch.vocab_size)
    for i in range(arch.num_layers):
        parts = ckpt.layer(i)
        for name, tensor in L.hf_layer_tensors(fmt, i, parts, arch):
            yield name, tensor
        del parts
    yield "model.norm.weight", ckpt.read(L.FINAL_NORM)
    make_room(ckpt.nbytes(L.OUTPUT))
    head = L.strip_vocab(ckpt.read(L.OUTPUT), arch.vocab_size)
    norms = row_norms(head)
    if normhead:
        from safetensors.torch import save_file

        with atomic_path(out_dir / ROW_NORMS_FILE) as tmp:
            save_file({ROW_NORMS_KEY: norms}, str(tmp))
    yield "lm_head.weight", head_for_export(head, normhead, norms)


def special_tokens(meta: dict) -> dict:
    """Baichuan's ids (pad 0, bos 1, eos 2) unless the run recorded others."""
    tok = meta.get("tokenizer") if isinstance(meta.get("tokenizer"), dict) else {}
    return {"pad_token_id": int(tok.get("pad_id", 0)), "bos_token_id": int(tok.get("bos_id", 1)),
            "eos_token_id": int(tok.get("eod_id", tok.get("eos_id", 2)))}


def tokenizer_from_meta(meta: dict, ckpt_dir: Path | None = None) -> str | None:
    """The tokenizer the checkpoint carries (CHECKPOINT/tokenizer/, copied as it was imported:
    the same tokenizer_config.json and class), else the one the run recorded (meta.json
    `tokenizer.model`); either is checked against the recorded sha256."""
    tok = meta.get("tokenizer")
    carried = Path(ckpt_dir) / TOKENIZER_DIR if ckpt_dir is not None else None
    if carried is not None and (carried / "tokenizer.model").is_file():
        want = tok.get("sha256") if isinstance(tok, dict) else None
        if want and sha256_file(carried / "tokenizer.model") != want:
            raise UserError("carried tokenizer differs from the one recorded (sha256 differs from meta.json)",
                            file=carried / "tokenizer.model", field="tokenizer.sha256",
                            expected="the original file or --tokenizer")
        # Without the release's tokenizer config (import-hf --tokenizer), convert the .model.
        return str(carried if (carried / "tokenizer_config.json").is_file() else carried / "tokenizer.model")
    path = (tok.get("model") or tok.get("path")) if isinstance(tok, dict) else tok
    if not path:
        return None
    if not Path(path).is_file():
        log.warning(f"tokenizer {path} recorded in meta.json no longer exists; exporting without it "
                    "(pass --tokenizer)")
        return None
    want = tok.get("sha256") if isinstance(tok, dict) else None
    if want and sha256_file(path) != want:
        raise UserError("tokenizer file changed since training (sha256 differs from meta.json)",
                        file=path, field="tokenizer.sha256", expected="the original file or --tokenizer")
    return path
