"""The code paths no CPU test runs, on one GPU, in one prepared script that prints one table:

  bf16 vs fp32      the same weights and batches: bf16 weights + fp32 master weights track fp32
  TE vs local       TransformerEngine and local layers: same loss from one checkpoint, loaded both ways
  ALiBi flash       flash-attn with ALiBi slopes (model.attention_backend=flash) vs SDPA with the bias
  async save        async checkpoint save, then a resume: the first resumed step's loss equal bit
                    for bit (its forward depends only on the restored weights), the next within
                    bf16 noise (fused-attention backward kernels may be nondeterministic)
  dist. optimizer   the distributed optimizer (7B/13B presets) saved, loaded and resumed: the
                    same losses; megatron's private state setter we wrap still exists
  step time / MFU   a ~1B Baichuan-2-shaped model (seq 4096, bf16), RoPE and ALiBi, at the largest
                    micro-batch that fits, with a short profile (top kernels; trace in --out)
  peak memory       measured peak against the dry-run estimate (pretrain.estimate)

    python bench/gpu_check.py [--out bench_out/gpu_check]     # on a GPU machine, no network needed
    python bench/gpu_check.py --cpu                            # smoke test: tiny shapes, seconds

Exit code 1 when a correctness check (parity, resume) fails; speed and memory are reported.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from pretrain.estimate import GiB  # noqa: E402

# TE: deterministic fused-attention backward where a kernel offers both (exact resume checks).
os.environ.setdefault("NVTE_ALLOW_NONDETERMINISTIC_ALGO", "0")

LAYOUT = {"tp": 1, "pp": 1, "vpp": None, "dp": 1}


def layout_meta(state, keep) -> dict:
    """meta.json contents of the checks' one-rank checkpoints."""
    return {"iteration": state.iteration, **LAYOUT}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu", action="store_true", help="smoke test on the CPU with tiny shapes")
    p.add_argument("--out", default="bench_out/gpu_check", help="profile table and trace go here")
    p.add_argument("--steps", type=int, default=None, help="timed steps per micro-batch size")
    p.add_argument("--max-mbs", type=int, default=16, help="largest micro-batch size tried")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- setup

def run_config(overrides: list[str], ckpt_dir: str):
    """A RunConfig through the project's Hydra configs and validation (as a dry run: no data)."""
    from hydra import compose, initialize_config_dir

    from pretrain.config import load_run_config
    from stack_common.config import config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("pretrain", overrides=overrides + ["optimizer=tiny", "optimizer.warmup_iters=0",
                                                         "training.dry_run=true", f"checkpoint.dir={ckpt_dir}"])
    return load_run_config(cfg, world_size=1, model_given=True)


def tiny_overrides(position: str = "rope") -> list[str]:
    return [f"model=tiny_{position}", "model.seq_length=64", "model.vocab_size=1000"]


def one_b_overrides(position: str) -> list[str]:
    """~1.3B parameters in Baichuan 2's shape (7B: hidden 4096, 32 layers; here 2048, 16)."""
    preset = "baichuan2_7b" if position == "rope" else "baichuan2_13b"
    return [f"model={preset}", "model.hidden_size=2048", "model.num_layers=16", "model.num_attention_heads=16",
            "model.ffn_hidden_size=5504", "model.seq_length=4096"]


def build(run, bf16: bool, backend: str | None = None):
    from pretrain.optim import build_optimizer
    from pretrain.parallelize import build_parallel_model

    cfg = dataclasses.replace(run.model, attention_backend=backend) if backend else run.model
    chunks = build_parallel_model(cfg, dtype=torch.bfloat16 if bf16 else torch.float32,
                                  distributed_optimizer=run.optimizer.distributed)
    return chunks, build_optimizer(run, chunks, bf16)


def free_memory() -> int:
    """Collect the models of the checks done (DDP hooks hold them in reference cycles) and
    return the cached blocks to the device, so a later peak-memory figure counts only its own
    model. Returns how many model chunks are still alive (0 expected)."""
    from megatron.core.distributed import DistributedDataParallel

    from pretrain.model.attention import clear_bias_cache

    clear_bias_cache()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return sum(isinstance(o, DistributedDataParallel) for o in gc.get_objects())


def batches(run, count: int, mbs: int, seed: int = 0) -> list[dict]:
    """Counting sequences (learnable) from seeded starts: the same batches for every model."""
    seq, vocab = run.seq_length, run.model.vocab_size
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        start = torch.randint(0, vocab - 3, (mbs, 1), generator=gen)
        step = torch.randint(1, 4, (mbs, 1), generator=gen)
        ids = 3 + (start + step * torch.arange(seq + 1)) % (vocab - 3)
        out.append({"tokens": ids[:, :-1], "labels": ids[:, 1:], "loss_mask": torch.ones(mbs, seq),
                    "position_ids": torch.arange(seq).expand(mbs, seq)})
    return out


def train(chunks, optimizer, data: list[dict], run) -> list[float]:
    from pretrain.step import train_step

    mbs = data[0]["tokens"].shape[0]
    return [train_step(chunks, optimizer, iter([b]), 1, mbs, run.seq_length)["lm_loss"] for b in data]


def copy_weights(src, dst) -> None:
    from pretrain.model import unwrap

    state = unwrap(src[0]).state_dict()
    with torch.no_grad():
        for name, tensor in unwrap(dst[0]).state_dict().items():
            if name in state and not name.endswith("_extra_state"):
                tensor.copy_(state[name])


# ----------------------------------------------------------------------------- checks

def check_bf16(run, steps: int) -> tuple[str, str, bool]:
    data = batches(run, steps, 2)
    fp32, opt32 = build(run, bf16=False)
    from pretrain.optim import build_optimizer
    from pretrain.parallelize import build_parallel_model

    bf16 = build_parallel_model(run.model, dtype=torch.bfloat16)
    copy_weights(fp32, bf16)
    opt16 = build_optimizer(run, bf16, True)     # master weights from the copied weights
    a, b = train(fp32, opt32, data, run), train(bf16, opt16, data, run)
    worst = max(abs(x - y) / abs(x) for x, y in zip(a, b))
    figures = f"fp32 {' '.join(f'{x:.4f}' for x in a)} | bf16 {' '.join(f'{x:.4f}' for x in b)}"
    return "bf16 vs fp32 loss", f"{figures} | worst rel. diff {worst:.2e} (limit 2e-2)", worst < 2e-2


def have_te() -> bool:
    from pretrain.model.config import have_transformer_engine

    return have_transformer_engine()


def check_te(run, tmp: Path) -> tuple[str, str, bool | None]:
    if not have_te():
        return "TE vs local spec", "skipped: TransformerEngine with CUDA not available", None
    from pretrain.checkpointing import CheckpointManager, TrainState
    from pretrain.model import layer_build, unwrap

    data = batches(run, 1, 2)
    losses, rows = {}, []
    for src, dst in (("te", "sdpa"), ("sdpa", "te")):
        model, _ = build(run, bf16=True, backend=src)
        ckpt = CheckpointManager(tmp / f"from_{src}", 1, layout_meta).save(model, None, None, TrainState())
        loaded, _ = build(run, bf16=True, backend=dst)
        CheckpointManager(tmp / "loads", 1, None).load(ckpt, loaded, None, None, layout=LAYOUT)
        for name, chunks in ((src, model), (dst, loaded)):
            losses[(src, name)] = eval_loss(chunks, data, run)
        rows.append(f"{src}->{dst}: {losses[(src, src)]:.5f} vs {losses[(src, dst)]:.5f}")
        assert layer_build(unwrap(model[0]).baichuan)["spec"] == ("transformer_engine" if src == "te" else "local")
    worst = max(abs(losses[(s, s)] - losses[(s, d)]) / losses[(s, s)] for s, d in (("te", "sdpa"), ("sdpa", "te")))
    return "TE vs local spec", f"{'; '.join(rows)} | worst rel. diff {worst:.2e} (limit 1e-2)", worst < 1e-2


def check_flash_alibi(run) -> tuple[str, str, bool | None]:
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return "ALiBi flash-attn vs SDPA", "skipped: flash-attn not installed", None
    if not torch.cuda.is_available():
        return "ALiBi flash-attn vs SDPA", "skipped: no CUDA", None
    data = batches(run, 3, 2)
    sdpa, opt_sdpa = build(run, bf16=True, backend="sdpa")
    flash, _ = build(run, bf16=True, backend="flash")
    copy_weights(sdpa, flash)
    from pretrain.optim import build_optimizer

    opt_flash = build_optimizer(run, flash, True)
    a, b = train(sdpa, opt_sdpa, data, run), train(flash, opt_flash, data, run)
    worst = max(abs(x - y) / abs(x) for x, y in zip(a, b))
    return ("ALiBi flash-attn vs SDPA", f"sdpa {' '.join(f'{x:.4f}' for x in a)} | flash "
            f"{' '.join(f'{x:.4f}' for x in b)} | worst rel. diff {worst:.2e} (limit 1e-2)", worst < 1e-2)


def eval_loss(chunks, data, run) -> float:
    from pretrain.step import eval_step

    mbs = data[0]["tokens"].shape[0]
    return eval_step(chunks, iter(data), len(data), mbs, run.seq_length)["lm_loss"]


def save_and_resume(run, tmp: Path, name: str, async_save: bool):
    """Two steps, a save at iteration 2 (training on while an async save is written), two more;
    then a fresh model and optimizer loaded from the save run the same two steps.
    Returns (losses of steps 3-4, resumed losses, seconds until save returned, manager)."""
    from pretrain.checkpointing import CheckpointManager, TrainState
    from pretrain.optim import build_scheduler

    data = batches(run, 4, 2)
    bf16 = torch.cuda.is_available()
    torch.manual_seed(7)
    chunks, opt = build(run, bf16)
    manager = CheckpointManager(tmp / name, 1, layout_meta, async_save=async_save)
    train(chunks, opt, data[:2], run)
    start = time.perf_counter()
    manager.save(chunks, opt, build_scheduler(run, opt), TrainState(iteration=2))
    queued = time.perf_counter() - start
    after = train(chunks, opt, data[2:], run)
    manager.finalize(blocking=True)
    fresh, fresh_opt = build(run, bf16)
    manager.load(manager.root / "iter_0000002", fresh, fresh_opt, build_scheduler(run, fresh_opt), layout=LAYOUT)
    return after, train(fresh, fresh_opt, data[2:], run), queued, manager


def resume_verdict(after: list[float], resumed: list[float], later_limit: float = 2e-3) -> tuple[str, bool]:
    """The first resumed step must match bit for bit (forward from restored weights only); later
    steps within `later_limit` relative (nondeterministic backward kernels, in bf16)."""
    if after == resumed:
        return "bit-exact", True
    worst = max((abs(x - y) / abs(x) for x, y in zip(after[1:], resumed[1:])), default=0.0)
    first = "first step bit-exact" if after[0] == resumed[0] else \
        f"first step differs ({after[0]!r} vs {resumed[0]!r})"
    return (f"{first}, later worst rel. diff {worst:.1e} (limit {later_limit:.0e})",
            after[0] == resumed[0] and worst <= later_limit)


def check_resume(run, tmp: Path) -> tuple[str, str, bool]:
    after, resumed, queued, manager = save_and_resume(run, tmp, "resume", async_save=True)
    kind = "async" if manager.async_queue is not None else "sync (CPU)"
    verdict, ok = resume_verdict(after, resumed)
    return (f"{kind} save + exact resume",
            f"save returned in {queued * 1000:.0f} ms; steps 3-4 {' '.join(f'{x:.6f}' for x in after)} vs "
            f"resumed {' '.join(f'{x:.6f}' for x in resumed)}: {verdict}", ok)


def check_distributed_optimizer(tiny_overrides_: list[str], tmp: Path) -> tuple[str, str, bool]:
    """The distributed optimizer of the 7B/13B presets through save, load and resume; and the
    private megatron method that checkpointing.adam_steps_aside wraps (a megatron upgrade that
    renames it would otherwise only show as a wrong resume)."""
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    run = run_config(tiny_overrides_ + ["optimizer.distributed=true"], str(tmp))
    hook = "_set_main_param_and_optimizer_states"
    if not callable(getattr(DistributedOptimizer, hook, None)):
        return "distributed optimizer save + resume", f"megatron's DistributedOptimizer.{hook} is gone", False
    after, resumed, _, _ = save_and_resume(run, tmp, "distributed", async_save=False)
    verdict, ok = resume_verdict(after, resumed)
    return ("distributed optimizer save + resume",
            f"steps 3-4 {' '.join(f'{x:.6f}' for x in after)} vs resumed "
            f"{' '.join(f'{x:.6f}' for x in resumed)}: {verdict}", ok)


def check_speed(run, label: str, name: str, steps: int, max_mbs: int, out: Path) -> tuple[list, object]:
    """Step time and MFU at the largest micro-batch that fits; returns rows and the estimate."""
    from pretrain.config import padded_vocab
    from pretrain.estimate import estimate
    from pretrain.monitoring import flops_per_token, peak_tflops

    cuda = torch.cuda.is_available()
    chunks, opt = build(run, bf16=cuda)
    best = None
    mbs = 1
    while mbs <= max_mbs:
        data = batches(run, steps + 1, mbs)
        try:
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            train(chunks, opt, data[:1], run)               # warm-up (allocations, kernels)
            sync()
            start = time.perf_counter()
            train(chunks, opt, data[1:], run)
            sync()
            seconds = (time.perf_counter() - start) / steps
            peak = torch.cuda.max_memory_allocated() if cuda else None
            best = (mbs, seconds, peak)
        except torch.cuda.OutOfMemoryError:
            break
        finally:
            if cuda:
                torch.cuda.empty_cache()
        mbs *= 2
    if best is None:
        return [(f"step time / MFU ({label})", "micro-batch 1 does not fit", False)], None
    mbs, seconds, peak = best
    tokens = mbs * run.seq_length / seconds
    tflops = tokens * flops_per_token(run.model, run.seq_length, padded_vocab(run)) / 1e12
    peak_tf = peak_tflops(None)
    mfu = f", MFU {tflops / peak_tf:.1%} of {peak_tf:.0f}" if peak_tf else ""
    mfu += " (causal attention FLOPs counted at half)"
    rows = [(f"step time / MFU ({label})",
             f"micro-batch {mbs}: {seconds * 1000:.0f} ms/step, {tokens:,.0f} tokens/s, {tflops:.1f} TFLOP/s{mfu}",
             None)]
    rows.append(profile(chunks, opt, batches(run, 2, mbs), run, out / f"profile_{name}", label))
    est = estimate(dataclasses.replace(run, training=dataclasses.replace(
        run.training, micro_batch_size=mbs, global_batch_size=mbs)), world=1)
    if peak is None:
        rows.append((f"peak memory ({label})", f"n/a on CPU (estimate {est.total_bytes / GiB:.2f} GiB)", None))
    else:
        ratio = peak / est.total_bytes
        rows.append((f"peak memory ({label})", f"measured {peak / GiB:.1f} GiB, dry-run estimate "
                     f"{est.total_bytes / GiB:.1f} GiB (states {est.state_bytes / GiB:.1f}, activations "
                     f"{est.activation_bytes / GiB:.1f}, logits {est.logits_bytes / GiB:.1f}): {ratio:.2f}x", None))
    return rows, est


def profile(chunks, opt, data, run, out: Path, label: str) -> tuple[str, str, None]:
    from torch.profiler import ProfilerActivity, profile as torch_profile

    cuda = torch.cuda.is_available()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with torch_profile(activities=activities) as prof:
        train(chunks, opt, data, run)
        sync()
    key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key), reverse=True)
    total = sum(getattr(e, key) for e in events) or 1
    top = ", ".join(f"{e.key[:40]} {getattr(e, key) / total:.0%}" for e in events[:3])
    out.mkdir(parents=True, exist_ok=True)
    (out / "top_ops.txt").write_text(prof.key_averages().table(sort_by=key, row_limit=30))
    prof.export_chrome_trace(str(out / "trace.json"))
    return f"profile ({label}, 2 steps)", f"top ops by self time: {top}; {out}/", None


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------- main

def print_table(rows: list) -> None:
    width = max(len(r[0]) for r in rows)
    print(f"{'check':<{width}}  {'ok':<4}  result")
    print(f"{'-' * width}  ----  {'-' * 60}")
    for name, result, ok in rows:
        mark = "-" if ok is None else ("ok" if ok else "FAIL")
        print(f"{name:<{width}}  {mark:<4}  {result}")


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.cpu and not torch.cuda.is_available():
        print("error: no CUDA device visible; run with --cpu for the smoke test", file=sys.stderr)
        return 2
    from pretrain.cpu_compat import apply_if_needed

    if args.cpu:
        import os

        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    apply_if_needed()
    from pretrain.parallel import destroy, init_distributed

    init_distributed(1, 1, backend="nccl" if not args.cpu else "gloo", device="cpu" if args.cpu else "cuda")
    out = Path(args.out)
    steps = args.steps or (1 if args.cpu else 5)
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tiny = run_config(tiny_overrides(), tmp)
            rows.append(check_bf16(tiny, 2 if args.cpu else 8))
            rows.append(check_te(tiny, Path(tmp)))
            rows.append(check_flash_alibi(run_config(tiny_overrides("alibi"), tmp)))
            rows.append(check_resume(tiny, Path(tmp)))
            alive = []
            for position in ("rope", "alibi"):
                alive.append(free_memory())
                over = tiny_overrides(position) if args.cpu else one_b_overrides(position)
                big = run_config(over, tmp)
                label = f"{position}, {params_label(big)}, seq {big.seq_length}"
                speed_rows, _ = check_speed(big, label, position, steps, 2 if args.cpu else args.max_mbs, out)
                rows += speed_rows
            rows.append(("memory freed between checks", f"model chunks alive before each speed run: "
                         f"{' '.join(map(str, alive))}", not any(alive)))
            # Last: a model trained with the distributed optimizer outlives gc.collect() (a
            # reference held outside Python's view after its step), so it would count in a peak.
            rows.append(check_distributed_optimizer(tiny_overrides(), Path(tmp)))
    finally:
        destroy()
    device = "CPU (smoke test)" if args.cpu else torch.cuda.get_device_name()
    print(f"gpu_check on {device}, torch {torch.__version__}")
    print_table(rows)
    failed = [r[0] for r in rows if r[2] is False]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def params_label(run) -> str:
    from pretrain.estimate import estimate

    total = estimate(run, world=1).total_params
    return f"{total / 1e9:.2f}B" if total >= 1e8 else f"{total / 1e6:.1f}M"


if __name__ == "__main__":
    sys.exit(main())
