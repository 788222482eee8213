"""Memory of `dynamics` on 7B-shaped tensors: two synthetic exports with Baichuan 2 7B's
vocabulary-sized embedding and lm_head (125,696 x 4,096, bf16: 0.96 GiB each) and two 7B
decoder layers, written as safetensors shards. Prints the wall time and the peak anonymous
memory of the process (RssAnon, sampled every 10 ms; memory-mapped file pages are not counted:
the kernel drops them at will) next to the size of the largest tensor.

    .venv/bin/python bench/bench_dynamics.py [--out /tmp/bench_dynamics] [--layers 2]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("BC_NO_PROGRESS", "1")

import torch  # noqa: E402

VOCAB, HIDDEN, FFN = 125696, 4096, 11008


def layer_shapes(i: int) -> dict[str, tuple[int, ...]]:
    p = f"model.layers.{i}."
    return {p + "self_attn.W_pack.weight": (3 * HIDDEN, HIDDEN), p + "self_attn.o_proj.weight": (HIDDEN, HIDDEN),
            p + "mlp.gate_proj.weight": (FFN, HIDDEN), p + "mlp.up_proj.weight": (FFN, HIDDEN),
            p + "mlp.down_proj.weight": (HIDDEN, FFN), p + "input_layernorm.weight": (HIDDEN,),
            p + "post_attention_layernorm.weight": (HIDDEN,)}


def write_export(out: Path, layers: int, seed: int, tokens: int) -> None:
    """One shard per tensor group, as export-hf writes them (an index and export_meta.json)."""
    from safetensors.torch import save_file

    out.mkdir(parents=True)
    gen = torch.Generator().manual_seed(seed)
    groups = {"model-embed.safetensors": {"model.embed_tokens.weight": (VOCAB, HIDDEN)},
              "model-head.safetensors": {"lm_head.weight": (VOCAB, HIDDEN), "model.norm.weight": (HIDDEN,)}}
    for i in range(layers):
        groups[f"model-layer{i}.safetensors"] = layer_shapes(i)
    weight_map = {}
    for file, shapes in groups.items():
        tensors = {name: (0.02 * torch.randn(shape, generator=gen)).to(torch.bfloat16) for name, shape in shapes.items()}
        save_file(tensors, str(out / file))
        weight_map.update(dict.fromkeys(shapes, file))
        del tensors
    (out / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (out / "config.json").write_text(json.dumps({"model_type": "baichuan"}))
    (out / "export_meta.json").write_text(json.dumps({"consumed_tokens": tokens, "iteration": seed}))


def rss_anon_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/bench_dynamics")
    parser.add_argument("--layers", type=int, default=2)
    args = parser.parse_args(argv)
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    for k, tokens in enumerate([220 * 10**9, 440 * 10**9]):
        write_export(out / "exports" / f"train_{tokens // 10**9:05d}B", args.layers, seed=k + 1, tokens=tokens)
    from checkpoints_tools.dynamics import training_dynamics

    import gc
    gc.collect()
    baseline = rss_anon_bytes()
    peak, running = [baseline], [True]

    def sample():
        while running[0]:
            peak[0] = max(peak[0], rss_anon_bytes())
            time.sleep(0.01)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    start = time.time()
    report = training_dynamics(out / "exports", out / "dynamics")
    seconds = time.time() - start
    running[0] = False
    thread.join()
    largest = VOCAB * HIDDEN * 2
    on_disk = sum(p.stat().st_size for p in (out / "exports").rglob("*.safetensors"))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; 2 exports x "
          f"({args.layers} 7B layers + 125,696 x 4,096 embedding and lm_head, bf16): {on_disk / 2**30:.2f} GiB read")
    print(f"dynamics: {seconds:.1f} s, {len(report.tensors)} tensor rows; peak anonymous memory "
          f"{(peak[0] - baseline) / 2**20:.0f} MiB above the {baseline / 2**20:.0f} MiB before the call; "
          f"largest tensor {largest / 2**20:.0f} MiB (bf16), {2 * largest / 2**20:.0f} MiB as fp32")
    return 0


if __name__ == "__main__":
    sys.exit(main())
