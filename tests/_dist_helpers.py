"""Multi-process helpers for CPU tests on gloo (importable by other test files).

`launch(world, fn, *args)` runs `fn(rank, world, *args)` in fresh spawned processes with
torchrun's env vars and returns each rank's result. Functions that run inside ranks call
`pretrain.cpu_compat.apply_if_needed()` first (done by `init_layout`).
The parity harness: build a TP=1 model, save its initial weights as a dist checkpoint, load
them into any TP/PP/VPP layout, and train a few AdamW steps on the same global batches."""
from __future__ import annotations

import os

import torch

from pretrain.parallel import run_local

os.environ.setdefault("BC_NO_PROGRESS", "1")


def launch(world_size: int, fn, *args, timeout: float = 600.0) -> list:
    return run_local(world_size, fn, *args, timeout=timeout)


def tiny_model_config(position: str = "rope", **overrides):
    from pretrain.model import ModelConfig

    fields = dict(name=f"test_{position}", hidden_size=64, num_layers=4, num_attention_heads=4,
                  ffn_hidden_size=96, vocab_size=1000, seq_length=32, position_embedding_type=position,
                  z_loss_coeff=1e-2, init_method_std=0.05)
    fields.update(overrides)
    return ModelConfig(**fields)


def init_layout(tp: int, pp: int, vpp=None, seed: int = 1234) -> None:
    from pretrain.cpu_compat import apply_if_needed

    apply_if_needed()
    from pretrain.parallel import init_distributed

    init_distributed(tp, pp, vpp, seed=seed, backend="gloo")


def model_state(chunks: list) -> dict:
    """Sharded state dicts of the GPTModels inside the DDP wrappers (keys without `module.`)."""
    from pretrain.model import unwrap

    if len(chunks) == 1:
        return {"model": unwrap(chunks[0]).sharded_state_dict()}
    return {f"model{i}": unwrap(c).sharded_state_dict() for i, c in enumerate(chunks)}


def save_weights(chunks: list, path: str) -> None:
    from megatron.core import dist_checkpointing

    os.makedirs(path, exist_ok=True)
    dist_checkpointing.save(model_state(chunks), path)


def load_weights(chunks: list, path: str) -> None:
    from megatron.core import dist_checkpointing

    from pretrain.model import unwrap

    loaded = dist_checkpointing.load(model_state(chunks), path)
    keys = ["model"] if len(chunks) == 1 else [f"model{i}" for i in range(len(chunks))]
    for chunk, key in zip(chunks, keys):
        unwrap(chunk).load_state_dict(loaded[key], strict=True)


def global_batches(steps: int, global_batch: int, seq: int, vocab: int, seed: int = 7) -> list:
    """Token batches [global_batch, seq+1] with a loss mask that drops ~15% of the tokens."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        tokens = torch.randint(0, vocab, (global_batch, seq + 1), generator=g)
        mask = (torch.rand(global_batch, seq, generator=g) > 0.15).float()
        out.append((tokens, mask))
    return out


def microbatches(batch, micro_batch_size: int, dp_rank: int, dp: int):
    """This DP rank's contiguous share of a global batch, as microbatch dicts."""
    tokens, mask = batch
    share = tokens.shape[0] // dp
    tokens, mask = tokens[dp_rank * share:(dp_rank + 1) * share], mask[dp_rank * share:(dp_rank + 1) * share]
    for i in range(0, share, micro_batch_size):
        t = tokens[i:i + micro_batch_size]
        yield {"tokens": t[:, :-1], "labels": t[:, 1:], "loss_mask": mask[i:i + micro_batch_size]}


def build_optimizer(chunks: list, lr: float = 3e-3, distributed: bool = False):
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    config = OptimizerConfig(optimizer="adam", lr=lr, weight_decay=0.1, adam_beta1=0.9,
                             adam_beta2=0.95, adam_eps=1e-8, clip_grad=1.0, bf16=False,
                             use_distributed_optimizer=distributed)
    return get_megatron_optimizer(config, chunks)


def train_layout(cfg, tp: int, pp: int, vpp, weights: str | None, steps: int = 3,
                 global_batch: int = 8, micro_batch_size: int = 2, save_to: str | None = None,
                 distributed_optimizer: bool = False, recompute: bool = False,
                 overlap_grad_reduce: bool = False) -> list:
    """Inside an initialized process group: build, load `weights`, train `steps` AdamW steps.
    Returns one metrics dict per step (same on every rank)."""
    from megatron.core import parallel_state as mpu

    from pretrain.parallelize import build_parallel_model
    from pretrain.step import train_step

    init_layout(tp, pp, vpp)
    chunks = build_parallel_model(cfg, tp=tp, pp=pp, vpp=vpp, distributed_optimizer=distributed_optimizer,
                                  recompute=recompute, overlap_grad_reduce=overlap_grad_reduce)
    if save_to:
        save_weights(chunks, save_to)
    if weights:
        load_weights(chunks, weights)
    optimizer = build_optimizer(chunks, distributed=distributed_optimizer)
    dp, dp_rank = mpu.get_data_parallel_world_size(), mpu.get_data_parallel_rank()
    num_micro = global_batch // (micro_batch_size * dp)
    history = []
    for batch in global_batches(steps, global_batch, cfg.seq_length, cfg.vocab_size):
        it = microbatches(batch, micro_batch_size, dp_rank, dp)
        history.append(train_step(chunks, optimizer, it, num_micro, micro_batch_size, cfg.seq_length))
    return history


def parity_worker(rank: int, world: int, runs: list) -> dict:
    """Run every (name, cfg, weights, (tp, pp, vpp, *options)) in these processes, in turn;
    options: "distopt" (distributed optimizer), "recompute" (full activation recomputation),
    "overlap" (DP grad reduction overlapped with the backward)."""
    from pretrain.parallel import destroy

    results = {}
    try:
        for name, cfg, weights, layout in runs:
            tp, pp, vpp = layout[:3]
            results[(name, *layout)] = train_layout(cfg, tp, pp, vpp, weights,
                                                    distributed_optimizer="distopt" in layout[3:],
                                                    recompute="recompute" in layout[3:],
                                                    overlap_grad_reduce="overlap" in layout[3:])
    finally:
        destroy()
    return results


def reference_worker(rank: int, world: int, cfgs: dict, out_dir: str, extra_checks=None) -> dict:
    """TP=1 PP=1 in one process: save the initial weights of each config, train, return metrics;
    then run `extra_checks(out_dir)` (a module-level function) in the same process."""
    from pretrain.parallel import destroy

    results = {}
    try:
        for name, cfg in cfgs.items():
            path = os.path.join(out_dir, name)
            results[name] = train_layout(cfg, 1, 1, None, None, save_to=path)
        if extra_checks is not None:
            results["checks"] = extra_checks(out_dir)
    finally:
        destroy()
    return results


PARITY_CONFIGS = {"rope": dict(position="rope"), "alibi": dict(position="alibi")}
_REFERENCE: dict = {}


def reference_run() -> tuple[dict, str]:
    """The TP=1 reference (metrics per step and saved initial weights), once per pytest process,
    shared by every test module that asks for it."""
    if "result" not in _REFERENCE:
        import atexit
        import shutil
        import tempfile

        out_dir = tempfile.mkdtemp(prefix="bc_parity_")
        atexit.register(shutil.rmtree, out_dir, True)
        cfgs = {name: tiny_model_config(**kw) for name, kw in PARITY_CONFIGS.items()}
        _REFERENCE["result"] = (launch(1, reference_worker, cfgs, out_dir, single_process_checks)[0], out_dir)
    return _REFERENCE["result"]


# ----------------------------------------------------------------------------- one-process checks

def single_process_checks(out_dir: str) -> dict:
    """Tensors computed by the model's megatron-core modules in one rank; the tests compare
    them with plain PyTorch written in the tests."""
    init_layout(1, 1)
    return {"normhead": _normhead_case(), "alibi": _alibi_case(), "bf16": _bf16_case(),
            "keys": _state_dict_keys(), "nan": _nan_case(), "clip": _clip_case(), "positions": _position_case(),
            "compat": _compat_case()}


def _normhead_case() -> dict:
    from pretrain.model import build_model, lm_loss_terms, unwrap

    cfg = tiny_model_config("rope")                     # vocabulary 1000 padded to 1024
    head = unwrap(build_model(cfg, tp=1, pp=1)[0]).output_layer
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=g) * 0.5)
    weight = head.weight.detach().clone()
    hidden = (torch.randn(6, 2, cfg.hidden_size, generator=g) * 3).requires_grad_()
    labels = torch.randint(0, cfg.vocab_size, (2, 6), generator=g)
    mask = (torch.rand(2, 6, generator=g) > 0.2).float()
    coeff = 0.05
    logits, _ = head(hidden)
    terms = lm_loss_terms(logits.transpose(0, 1), labels, mask, cfg.vocab_size, coeff)
    terms["total"].backward()
    return {"weight": weight, "weight_after": head.weight.detach().clone(), "hidden": hidden.detach(),
            "labels": labels, "mask": mask, "coeff": coeff, "vocab": cfg.vocab_size,
            "total": terms["total"].item(), "lm": terms["lm"].item(), "z": terms["z"].item(),
            "max_logit": terms["max_logit"].item(), "grad_weight": head.weight.grad.clone(),
            "grad_hidden": hidden.grad.clone()}


def _alibi_case() -> dict:
    from pretrain.model import SDPAttention, transformer_config
    from megatron.core.transformer.enums import AttnMaskType

    cfg = tiny_model_config("alibi", num_attention_heads=8, hidden_size=64)
    attn = SDPAttention(transformer_config(cfg), 1, AttnMaskType.causal, "self", alibi=True)
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(10, 2, 8, 8, generator=g) for _ in range(3))   # [s, b, heads, d]
    return {"q": q, "k": k, "v": v, "out": attn(q, k, v, None).detach()}


def _bf16_case() -> dict:
    from pretrain.model import build_model, unwrap

    cfg = tiny_model_config("rope", seq_length=4096)
    fp32 = unwrap(build_model(cfg, tp=1, pp=1)[0])
    bf16 = unwrap(build_model(cfg, tp=1, pp=1, dtype=torch.bfloat16)[0])
    bf16.load_state_dict(fp32.state_dict())
    freqs = bf16.rotary_pos_emb(4096)
    tokens = torch.randint(0, cfg.vocab_size, (2, 24), generator=torch.Generator().manual_seed(9))
    positions = torch.arange(24).unsqueeze(0).expand(2, -1)
    with torch.no_grad():
        out32 = fp32(tokens, positions, None)
        out16 = bf16(tokens, positions, None)
    return {"freq_dtype": str(freqs.dtype), "distinct_positions": int(freqs[:, 0, 0, 0].unique().numel()),
            "param_dtype": str(next(bf16.parameters()).dtype),
            "logits32": out32.float(), "logits16": out16.float()}


def _state_dict_keys() -> list:
    from pretrain.model import build_model, unwrap

    chunk = unwrap(build_model(tiny_model_config("rope"), tp=1, pp=1)[0])
    return sorted(k for k in chunk.state_dict() if not k.endswith("_extra_state"))


def _nan_case() -> dict:
    from pretrain.parallelize import build_parallel_model
    from pretrain.step import train_step

    cfg = tiny_model_config("rope")
    chunks = build_parallel_model(cfg, tp=1, pp=1)
    optimizer = build_optimizer(chunks)
    batches = global_batches(2, 4, cfg.seq_length, cfg.vocab_size)
    before = [p.detach().clone() for p in chunks[0].parameters()]
    hook = chunks[0].register_forward_hook(lambda mod, inp, out: out * float("nan"))
    poisoned = train_step(chunks, optimizer, microbatches(batches[0], 2, 0, 1), 2, 2, cfg.seq_length)
    hook.remove()
    unchanged = all(torch.equal(a, b) for a, b in zip(before, chunks[0].parameters()))
    healthy = train_step(chunks, optimizer, microbatches(batches[1], 2, 0, 1), 2, 2, cfg.seq_length)
    changed = not all(torch.equal(a, b) for a, b in zip(before, chunks[0].parameters()))
    return {"poisoned": poisoned, "unchanged": unchanged, "healthy": healthy, "changed": changed}


def _clip_case(clip: float = 0.05, lr: float = 0.1) -> dict:
    """One SGD step (the update is -lr x the clipped gradient) from the same weights and batch three
    ways: `train_step` (our optimizer_step) with clip_grad=`clip`, megatron's own `optimizer.step()`
    with the same clip, and `train_step` without clipping."""
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    from pretrain import step as step_module
    from pretrain.parallelize import build_parallel_model

    cfg = tiny_model_config("rope")
    batch = global_batches(1, 4, cfg.seq_length, cfg.vocab_size, seed=21)[0]
    first = build_parallel_model(cfg, tp=1, pp=1)
    before = [p.detach().clone() for p in first[0].parameters()]

    def one_step(clip_grad: float, megatron_step: bool) -> tuple[dict, list]:
        chunks = first if not megatron_step and clip_grad else build_parallel_model(cfg, tp=1, pp=1)
        with torch.no_grad():
            for p, b in zip(chunks[0].parameters(), before):
                p.copy_(b)
        optimizer = get_megatron_optimizer(OptimizerConfig(optimizer="sgd", lr=lr, sgd_momentum=0.0, weight_decay=0.0,
                                                           clip_grad=clip_grad, bf16=False), chunks)
        ours = step_module.optimizer_step
        if megatron_step:
            step_module.optimizer_step = lambda opt: (lambda r: (bool(r[0]), float(r[1])))(opt.step())
        try:
            metrics = step_module.train_step(chunks, optimizer, microbatches(batch, 2, 0, 1), 2, 2, cfg.seq_length)
        finally:
            step_module.optimizer_step = ours
        return metrics, [p.detach().clone() for p in chunks[0].parameters()]

    (ours, after_ours), (megatron, after_megatron), (unclipped, after_unclipped) = (
        one_step(clip, False), one_step(clip, True), one_step(0.0, False))
    return {"clip": clip, "lr": lr, "before": before, "ours": ours, "megatron": megatron, "unclipped": unclipped,
            "after_ours": after_ours, "after_megatron": after_megatron, "after_unclipped": after_unclipped}


def _position_case() -> dict:
    """How each position encoding is wired into the built model, and whether the two tiny models start
    from the same weights (same seed, no parameter of their own)."""
    from pretrain.model import build_model, unwrap

    out, states = {}, {}
    for position in ("rope", "alibi"):
        init_layout(1, 1)
        model = unwrap(build_model(tiny_model_config(position), tp=1, pp=1)[0])
        out[position] = {"alibi": [layer.self_attention.core_attention.alibi for layer in model.decoder.layers],
                         "rotary": getattr(model, "rotary_pos_emb", None) is not None}
        states[position] = {k: v for k, v in model.state_dict().items() if not k.endswith("_extra_state")}
    out["same_init"] = states["rope"].keys() == states["alibi"].keys() and all(
        torch.equal(v, states["alibi"][k]) for k, v in states["rope"].items())
    return out


def _compat_case() -> dict:
    from megatron.core import tensor_parallel

    from pretrain import cpu_compat

    again = cpu_compat.apply_if_needed()                  # second call: nothing re-wrapped
    wrapped_once = not getattr(getattr(torch.zeros, "__wrapped__", None), "__cpu_compat__", False)
    devices = {
        "zeros_cuda": torch.zeros(2, device="cuda").device.type,
        "empty_current": torch.empty(2, device=torch.cuda.current_device()).device.type,
        "tensor_cuda": torch.tensor([1.0], device=torch.device("cuda", 0)).device.type,
        "to_cuda": torch.ones(1).to("cuda").device.type,
        "dot_cuda": torch.ones(1).cuda().device.type,
    }
    torch.cuda.synchronize()
    # The tracker's stream is separate: forking must not advance the default stream.
    torch.manual_seed(11)
    plain = [torch.rand(3) for _ in range(2)]
    torch.manual_seed(11)
    first = torch.rand(3)
    with tensor_parallel.get_cuda_rng_tracker().fork():
        forked = torch.rand(3)
    second = torch.rand(3)
    with cpu_compat.cuda_type_names():
        inside = torch.ones(1).type()
    return {"again": again, "wrapped_once": wrapped_once, "devices": devices,
            "stream_kept": torch.equal(first, plain[0]) and torch.equal(second, plain[1]),
            "forked_differs": not torch.equal(forked, plain[1]),
            "type_inside": inside, "type_after": torch.ones(1).type()}
