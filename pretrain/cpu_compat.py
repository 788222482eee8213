"""Run megatron-core (0.16.1 and 0.19) on machines without CUDA (CI on gloo), unchanged on GPU
machines.

megatron-core assumes CUDA in a handful of places; this module redirects each of them to the
CPU, and only when CUDA is absent:
- `torch.cuda.current_device()` (RoPE, TP and pipeline buffers) -> "cpu";
  `torch.cuda.synchronize()` -> no-op; `Tensor.cuda()` / `Module.cuda()` -> stay on the CPU;
  `torch.cuda.current_stream()` (0.19's grad sync waits on it) -> a stream whose waits do nothing.
- `device="cuda"` literals (schedules, causal masks, optimizer, grad clipping,
  dist_checkpointing) -> the tensor factories map any CUDA device to the CPU.
- The CUDA RNG tracker (`model_parallel_cuda_manual_seed`, `_get/_set_cuda_rng_state`) -> the
  CPU generator, so the tracker's fork/restore logic still holds.
- `tensor.type() == 'torch.cuda.FloatTensor'` in grad clipping -> a clip that checks the dtype;
  the same checks in the optimizers' constructors (distributed, bf16) see CUDA type names of
  CPU tensors while those constructors run.

Call `apply_if_needed()` first thing in every rank, before megatron is imported elsewhere.
"""
from __future__ import annotations

import contextlib
import functools
import types

import torch

_APPLIED = False

# Factories that take a `device=` keyword and are called with CUDA literals by megatron-core.
_FACTORIES = ("empty", "zeros", "ones", "full", "tensor", "arange", "rand", "randn", "randint",
              "empty_like", "zeros_like", "ones_like", "full_like", "as_tensor", "empty_strided")


def apply_if_needed() -> bool:
    """Patch once when CUDA is absent. Returns True when the CPU redirection is active."""
    global _APPLIED
    if torch.cuda.is_available():
        return False
    if not _APPLIED:
        _patch_devices()
        _patch_rng()
        _patch_megatron()
        _APPLIED = True
    return True


def is_applied() -> bool:
    return _APPLIED


def to_cpu_device(device):
    """Any CUDA device (string, torch.device or ordinal) -> "cpu"; others unchanged."""
    if isinstance(device, int) and not isinstance(device, bool):
        return "cpu"
    if isinstance(device, str) and device.startswith("cuda"):
        return "cpu"
    if isinstance(device, torch.device) and device.type == "cuda":
        return "cpu"
    return device


def _redirect_device(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if "device" in kwargs:
            kwargs["device"] = to_cpu_device(kwargs["device"])
        return fn(*args, **kwargs)

    wrapper.__cpu_compat__ = True
    return wrapper


# What megatron asks of the current CUDA stream (waits on events and streams): nothing on CPU.
_CPU_STREAM = types.SimpleNamespace(wait_event=lambda event: None, wait_stream=lambda stream: None,
                                    synchronize=lambda: None)


def _patch_devices() -> None:
    for name in _FACTORIES:
        fn = getattr(torch, name)
        if not getattr(fn, "__cpu_compat__", False):
            setattr(torch, name, _redirect_device(fn))
    torch.cuda.current_device = lambda: "cpu"
    torch.cuda.synchronize = lambda device=None: None
    torch.cuda.current_stream = torch.cuda.default_stream = lambda device=None: _CPU_STREAM
    torch.Tensor.cuda = lambda self, device=None, non_blocking=False, **kw: self
    torch.nn.Module.cuda = lambda self, device=None: self
    original_to = torch.Tensor.to
    if not getattr(original_to, "__cpu_compat__", False):
        @functools.wraps(original_to)
        def to(self, *args, **kwargs):
            if args and not isinstance(args[0], (torch.dtype, torch.Tensor)):
                args = (to_cpu_device(args[0]),) + args[1:]
            if "device" in kwargs:
                kwargs["device"] = to_cpu_device(kwargs["device"])
            return original_to(self, *args, **kwargs)

        to.__cpu_compat__ = True
        torch.Tensor.to = to


def _patch_rng() -> None:
    """The "CUDA" generator of megatron's RNG tracker becomes the CPU default generator."""
    torch.cuda.get_rng_state = lambda device="cuda": torch.get_rng_state()
    torch.cuda.set_rng_state = lambda new_state, device="cuda": torch.set_rng_state(new_state)
    # torch.manual_seed itself calls torch.cuda.manual_seed_all: seed the CPU generator directly.
    torch.cuda.manual_seed = lambda seed: torch.default_generator.manual_seed(int(seed))
    torch.cuda.manual_seed_all = lambda seed: torch.default_generator.manual_seed(int(seed))
    torch.cuda.get_rng_state_all = lambda: [torch.get_rng_state()]
    torch.cuda.set_rng_state_all = lambda states: torch.set_rng_state(states[0])


def _get_rng_state(device="cuda", clone=False, graph_safe=False):
    state = torch.get_rng_state()
    return state.clone() if clone else state


def _set_rng_state(new_state, device=-1, graph_safe=False):
    torch.set_rng_state(new_state)


def _clip_grad_by_total_norm(parameters, max_norm, total_norm, use_decoupled_grad=False):
    """Same contract as megatron's clip_grad_by_total_norm_fp32, with a dtype check instead of
    the CUDA type-string check."""
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    attr = "decoupled_grad" if use_decoupled_grad else "grad"
    grads = [getattr(p, attr).detach() for p in parameters if getattr(p, attr, None) is not None]
    for g in grads:
        assert g.dtype in (torch.float32, torch.bfloat16), f"grad clipping expects fp32 grads, got {g.dtype}"
    clip_coeff = max_norm / (total_norm + 1.0e-6)
    if clip_coeff < 1.0 and grads:
        torch._foreach_mul_(grads, clip_coeff)


@contextlib.contextmanager
def cuda_type_names():
    """While active, `cpu_tensor.type()` answers 'torch.cuda.FloatTensor' (etc.)."""
    original = torch.Tensor.type

    def type_(self, dtype=None, non_blocking=False, **kwargs):
        if dtype is None and not kwargs and self.device.type == "cpu":
            return original(self).replace("torch.", "torch.cuda.", 1)
        return original(self, dtype, non_blocking, **kwargs)

    torch.Tensor.type = type_
    try:
        yield
    finally:
        torch.Tensor.type = original


def _with_cuda_type_names(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with cuda_type_names():
            return fn(*args, **kwargs)

    wrapper.__cpu_compat__ = True
    return wrapper


def _patch_megatron() -> None:
    from megatron.core.tensor_parallel import random as tp_random

    tp_random._get_cuda_rng_state = _get_rng_state
    tp_random._set_cuda_rng_state = _set_rng_state

    from megatron.core.optimizer import clip_grads, distrib_optimizer, optimizer

    clip_grads.clip_grad_by_total_norm_fp32 = _clip_grad_by_total_norm
    optimizer.clip_grad_by_total_norm_fp32 = _clip_grad_by_total_norm
    for cls in (distrib_optimizer.DistributedOptimizer, optimizer.Float16OptimizerWithFloat16Params):
        if not getattr(cls.__init__, "__cpu_compat__", False):
            cls.__init__ = _with_cuda_type_names(cls.__init__)
