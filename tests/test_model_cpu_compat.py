"""pretrain.cpu_compat: megatron-core's CUDA assumptions redirected to the CPU, only without
CUDA, idempotently. The patched process is a spawned rank; this pytest process stays clean."""
import torch

from _dist_helpers import launch, reference_run


def test_cuda_devices_and_rng_redirected_in_a_rank():
    c = reference_run()[0]["checks"]["compat"]
    assert c["again"] is True and c["wrapped_once"]
    assert set(c["devices"].values()) == {"cpu"}, c["devices"]
    assert c["stream_kept"] and c["forked_differs"]
    assert c["type_inside"] == "torch.cuda.FloatTensor" and c["type_after"] == "torch.FloatTensor"


def _patch_targets() -> dict:
    """Every torch and megatron-core attribute that cpu_compat may replace, by name."""
    from megatron.core.optimizer import clip_grads, distrib_optimizer, optimizer
    from megatron.core.tensor_parallel import random as tp_random

    from pretrain import cpu_compat

    targets = {f"torch.{n}": getattr(torch, n) for n in cpu_compat._FACTORIES}
    targets.update({f"torch.cuda.{n}": getattr(torch.cuda, n) for n in (
        "current_device", "synchronize", "current_stream", "default_stream", "get_rng_state", "set_rng_state",
        "manual_seed", "manual_seed_all", "get_rng_state_all", "set_rng_state_all")})
    targets.update({"Tensor.cuda": torch.Tensor.cuda, "Module.cuda": torch.nn.Module.cuda, "Tensor.to": torch.Tensor.to,
                    "tp_random._get_cuda_rng_state": tp_random._get_cuda_rng_state,
                    "tp_random._set_cuda_rng_state": tp_random._set_cuda_rng_state,
                    "clip_grads.clip_grad_by_total_norm_fp32": clip_grads.clip_grad_by_total_norm_fp32,
                    "optimizer.clip_grad_by_total_norm_fp32": optimizer.clip_grad_by_total_norm_fp32,
                    "DistributedOptimizer.__init__": distrib_optimizer.DistributedOptimizer.__init__,
                    "Float16OptimizerWithFloat16Params.__init__": optimizer.Float16OptimizerWithFloat16Params.__init__})
    return targets


def cuda_then_no_cuda(rank: int, world: int) -> dict:
    """In a fresh process: apply_if_needed with CUDA reported present, then absent."""
    from pretrain import cpu_compat

    original = _patch_targets()
    torch.cuda.is_available = lambda: True
    with_cuda = cpu_compat.apply_if_needed(), cpu_compat.is_applied()
    changed_with_cuda = sorted(k for k, v in _patch_targets().items() if v is not original[k])
    torch.cuda.is_available = lambda: False
    without_cuda = cpu_compat.apply_if_needed(), cpu_compat.is_applied()
    changed_without_cuda = sorted(k for k, v in _patch_targets().items() if v is not original[k])
    return {"targets": sorted(original), "with_cuda": with_cuda, "changed_with_cuda": changed_with_cuda,
            "without_cuda": without_cuda, "changed_without_cuda": changed_without_cuda}


def test_nothing_is_patched_when_cuda_is_present():
    """With CUDA reported, not one of the attributes that the CPU redirection replaces is touched; the same
    process without CUDA gets every one of them replaced."""
    r = launch(1, cuda_then_no_cuda)[0]
    assert r["with_cuda"] == (False, False) and r["changed_with_cuda"] == []
    assert r["without_cuda"] == (True, True) and r["changed_without_cuda"] == r["targets"]
    assert len(r["targets"]) == 34


def test_pytest_process_stays_unpatched():
    """The model tests ran megatron in spawned ranks, never here."""
    assert not getattr(torch.zeros, "__cpu_compat__", False)
