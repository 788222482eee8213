"""Step time on CPU: our Baichuan 2 model on megatron-core (TP=1, one process, gloo) against
Hugging Face `LlamaForCausalLM` of the same dimensions; forward + backward + AdamW, same
threads, same batch. Each side runs in its own subprocess so neither sees the other's patches.

    .venv/bin/python bench/bench_step_cpu.py [--threads 2] [--hidden 256] [--layers 4] ...
Prints the median step time of each and their ratio."""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--ffn", type=int, default=688)
    p.add_argument("--vocab", type=int, default=8192)     # a multiple of 128: no padding on our side
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--position", choices=["rope", "alibi"], default="rope")
    p.add_argument("--side", choices=["ours", "hf"], help=argparse.SUPPRESS)
    return p.parse_args(argv)


def batches(args, seed=0):
    import torch

    g = torch.Generator().manual_seed(seed)
    while True:
        tokens = torch.randint(0, args.vocab, (args.batch, args.seq + 1), generator=g)
        yield {"tokens": tokens[:, :-1], "labels": tokens[:, 1:], "loss_mask": torch.ones(args.batch, args.seq)}


def time_steps(step, args) -> list[float]:
    times = []
    for i in range(args.warmup + args.steps):
        start = time.perf_counter()
        step()
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    return times


def run_ours(args) -> dict:
    import torch

    from pretrain.cpu_compat import apply_if_needed

    apply_if_needed()
    torch.set_num_threads(args.threads)
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    from pretrain.model import ModelConfig
    from pretrain.parallelize import build_parallel_model
    from pretrain.parallel import destroy, init_distributed
    from pretrain.step import train_step

    init_distributed(1, 1, backend="gloo")
    cfg = ModelConfig(name="bench", hidden_size=args.hidden, num_layers=args.layers,
                      num_attention_heads=args.heads, ffn_hidden_size=args.ffn, vocab_size=args.vocab,
                      seq_length=args.seq, position_embedding_type=args.position)
    chunks = build_parallel_model(cfg, tp=1, pp=1)
    optimizer = get_megatron_optimizer(
        OptimizerConfig(optimizer="adam", lr=1e-4, weight_decay=0.1, adam_beta1=0.9, adam_beta2=0.95,
                        clip_grad=1.0), chunks)
    data = batches(args)
    losses = []
    times = time_steps(lambda: losses.append(
        train_step(chunks, optimizer, data, 1, args.batch, args.seq)["lm_loss"]), args)
    params = sum(p.numel() for p in chunks[0].parameters())
    destroy()
    return {"times": times, "params": params, "first_loss": losses[0]}


def run_hf(args) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.ffn,
                         num_hidden_layers=args.layers, num_attention_heads=args.heads,
                         num_key_value_heads=args.heads, max_position_embeddings=args.seq,
                         rms_norm_eps=1e-6, tie_word_embeddings=False, attention_bias=False,
                         mlp_bias=False, attn_implementation="sdpa")
    model = LlamaForCausalLM(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    data = batches(args)
    losses = []

    def step():
        b = next(data)
        optimizer.zero_grad(set_to_none=True)
        out = model(input_ids=b["tokens"], labels=None)
        loss = torch.nn.functional.cross_entropy(out.logits.float().reshape(-1, args.vocab),
                                                 b["labels"].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())

    times = time_steps(step, args)
    return {"times": times, "params": sum(p.numel() for p in model.parameters()), "first_loss": losses[0]}


def run_side(side: str, argv: list[str]) -> dict:
    cmd = [sys.executable, "-W", "ignore", str(Path(__file__).resolve()), *argv, "--side", side]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{side} side failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.side:
        result = run_ours(args) if args.side == "ours" else run_hf(args)
        print(json.dumps(result))
        return 0
    tokens = args.batch * args.seq
    print(f"config: hidden {args.hidden}, layers {args.layers}, heads {args.heads}, ffn {args.ffn}, "
          f"vocab {args.vocab}, seq {args.seq}, batch {args.batch}, {args.position}; "
          f"threads {args.threads}; median of {args.steps} steps after {args.warmup} warmup")
    results = {}
    for side, label in (("hf", "HF LlamaForCausalLM + torch AdamW"), ("ours", "ours (megatron-core GPTModel)")):
        r = run_side(side, argv)
        med = statistics.median(r["times"])
        results[side] = med
        print(f"{label:38s} params {r['params'] / 1e6:6.2f}M  step {med * 1000:8.1f} ms  "
              f"({tokens / med:,.0f} tokens/s, min {min(r['times']) * 1000:.1f} ms, first loss {r['first_loss']:.3f})")
    print(f"ratio ours / HF: {results['ours'] / results['hf']:.2f} (below 1 = ours faster)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
