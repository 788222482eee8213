"""Benchmark: export a 7B-shaped checkpoint with random weights to Hugging Face format.

    .venv/bin/python bench/bench_convert.py [--work bench_out/convert] [--dtype bf16] [--tp 2]

1. Writes a torch_dist checkpoint in megatron-core's key layout (stacked layer axis, each tensor
   split into the chunks that `--tp` ranks would write), one chunk at a time so that writing
   needs no more memory than a chunk. torch.distributed.checkpoint's own loader reads it back
   as a check.
2. Runs `python -m checkpoints_tools export-hf` in a child process and prints wall time, MB/s
   and the child's peak RSS next to the largest tensor (goal: peak RSS < 2 GB + largest tensor).

bf16 by default: the fp32 copy is 28 GB, too much disk and time for the shared machine.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}


def shapes_7b(layers, hidden, ffn, heads, vocab):
    """Global tensors of a Baichuan 2 7B-shaped GPTModel (vocab needs no padding at TP 1/2)."""
    L = layers
    return {
        "embedding.word_embeddings.weight": ((vocab, hidden), 0),
        "decoder.layers.self_attention.linear_qkv.weight": ((L, 3 * hidden, hidden), 1),
        "decoder.layers.self_attention.linear_qkv.layer_norm_weight": ((L, hidden), None),
        "decoder.layers.self_attention.linear_proj.weight": ((L, hidden, hidden), 2),
        "decoder.layers.mlp.linear_fc1.weight": ((L, 2 * ffn, hidden), 1),
        "decoder.layers.mlp.linear_fc1.layer_norm_weight": ((L, hidden), None),
        "decoder.layers.mlp.linear_fc2.weight": ((L, hidden, ffn), 2),
        "decoder.final_layernorm.weight": ((hidden,), None),
        "output_layer.weight": ((vocab, hidden), 0),
    }


def chunk_plan(shape, tp_axis, tp, stacked):
    """(offsets, sizes) of every chunk: one per layer (stacked axis) x TP rank (split axis)."""
    layer_range = range(shape[0]) if stacked else [None]
    plans = []
    for layer in layer_range:
        for rank in range(tp if tp_axis is not None else 1):
            offsets, sizes = [0] * len(shape), list(shape)
            if layer is not None:
                offsets[0], sizes[0] = layer, 1
            if tp_axis is not None:
                part = shape[tp_axis] // tp
                offsets[tp_axis], sizes[tp_axis] = rank * part, part
            plans.append((tuple(offsets), tuple(sizes)))
    return plans


def write_checkpoint(ckpt: Path, args) -> int:
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import (ChunkStorageMetadata, Metadata, MetadataIndex,
                                                       TensorProperties, TensorStorageMetadata)

    dtype = DTYPES[args.dtype]
    ckpt.mkdir(parents=True)
    state, storage, total = {}, {}, 0
    # Random values drawn once and tiled: drawing 7B normals would dominate the benchmark's time.
    pool = (torch.randn(1 << 24, generator=torch.Generator().manual_seed(0)) * 0.02).to(dtype)
    data_file = "__0_0.distcp"
    with open(ckpt / data_file, "wb") as fh:
        for key, (shape, tp_axis) in shapes_7b(args.layers, args.hidden, args.ffn, args.heads,
                                               args.vocab).items():
            stacked = key.startswith("decoder.layers.")
            chunks = []
            for offsets, sizes in chunk_plan(shape, tp_axis, args.tp, stacked):
                numel = int(torch.Size(sizes).numel())
                shift = (len(chunks) * 7919) % pool.numel()   # different values per chunk
                tensor = pool.roll(shift).repeat(-(-numel // pool.numel()))[:numel].view(sizes).clone()
                start = fh.tell()
                torch.save(tensor, fh)
                storage[MetadataIndex(key, torch.Size(offsets))] = _StorageInfo(data_file, start,
                                                                              fh.tell() - start)
                chunks.append(ChunkStorageMetadata(offsets=torch.Size(offsets), sizes=torch.Size(sizes)))
                total += tensor.numel() * tensor.element_size()
            state[key] = TensorStorageMetadata(properties=TensorProperties(dtype=dtype),
                                               size=torch.Size(shape), chunks=chunks)
    with open(ckpt / ".metadata", "wb") as fh:
        pickle.dump(Metadata(state_dict_metadata=state, storage_data=storage), fh)
    (ckpt / "metadata.json").write_text(json.dumps({"sharded_backend": "torch_dist",
                                                    "sharded_backend_version": 1}))
    model = {"num_layers": args.layers, "hidden_size": args.hidden, "num_attention_heads": args.heads,
             "num_query_groups": args.heads, "ffn_hidden_size": args.ffn, "seq_length": 4096,
             "position_embedding_type": "rope", "vocab_size": args.vocab}
    (ckpt / "meta.json").write_text(json.dumps({
        "iteration": 1, "consumed_tokens": 0, "tp": args.tp, "pp": 1, "vpp": None, "dp": 1,
        "model": model, "vocab_size": args.vocab, "padded_vocab_size": args.vocab, "bench": vars(args)}))
    return total


def check_with_torch_loader(ckpt: Path, hidden: int, dtype) -> None:
    import torch.distributed.checkpoint as dcp

    probe = {"decoder.final_layernorm.weight": torch.empty(hidden, dtype=dtype)}
    dcp.load(probe, checkpoint_id=str(ckpt), no_dist=True)
    assert probe["decoder.final_layernorm.weight"].abs().sum() > 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default=str(REPO / "bench_out" / "convert"))
    p.add_argument("--dtype", default="bf16", choices=list(DTYPES))
    p.add_argument("--tp", type=int, default=2, help="chunks per tensor, as TP ranks would write")
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--ffn", type=int, default=11008)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--vocab", type=int, default=125696)
    p.add_argument("--format", default="llama", choices=["llama", "baichuan"])
    p.add_argument("--keep", action="store_true", help="keep the checkpoint (reused by the next run)")
    args = p.parse_args()
    work = Path(args.work)
    ckpt, out = work / "iter_0000001", work / "hf"
    shutil.rmtree(out, ignore_errors=True)
    if (ckpt / "meta.json").is_file() and json.loads((ckpt / "meta.json").read_text()).get("bench") == vars(args):
        total = sum(f.stat().st_size for f in ckpt.glob("*.distcp"))
        print(f"reusing the random checkpoint kept by the last run ({ckpt})")
    else:
        shutil.rmtree(work, ignore_errors=True)
        t0 = time.time()
        total = write_checkpoint(ckpt, args)
        print(f"wrote random checkpoint: {total / 1e9:.2f} GB {args.dtype} in {time.time() - t0:.0f}s ({ckpt})")
    check_with_torch_loader(ckpt, args.hidden, DTYPES[args.dtype])
    largest = max(s for s in [args.vocab * args.hidden, 2 * args.ffn * args.hidden]) \
        * torch.tensor([], dtype=DTYPES[args.dtype]).element_size()

    env = dict(os.environ, BC_NO_PROGRESS="1")
    t0 = time.time()
    res = subprocess.run([sys.executable, "-m", "checkpoints_tools", "export-hf", str(ckpt), "--out", str(out),
                          "--format", args.format], cwd=REPO, env=env)
    wall = time.time() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    if res.returncode != 0:
        sys.exit(f"export failed with exit code {res.returncode}")
    written = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    print(f"export-hf ({args.format}): {wall:.1f}s wall, {written / 2**20 / wall:.0f} MB/s written "
          f"({written / 1e9:.2f} GB), {total / 2**20 / wall:.0f} MB/s read")
    print(f"peak RSS of the converter: {peak / 2**30:.2f} GiB; largest tensor {largest / 2**30:.2f} GiB; "
          f"goal < 2 GiB + largest = {(2 * 2**30 + largest) / 2**30:.2f} GiB: "
          f"{'met' if peak < 2 * 2**30 + largest else 'NOT met'}")
    shutil.rmtree(out, ignore_errors=True)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
