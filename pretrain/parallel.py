"""Process groups for tensor, pipeline (optionally interleaved) and data parallelism through
megatron-core's parallel_state, on NCCL (GPU) or gloo (CPU); seeds; teardown; and a launcher of
N local processes for tests and tools (the torchrun environment without torchrun)."""
from __future__ import annotations

import os
import pickle
import random
import socket
import traceback
from datetime import timedelta
from typing import Callable, Optional

import torch
from torch.distributed import PrefixStore


def init_distributed(tp: int = 1, pp: int = 1, vpp: Optional[int] = None, seed: int = 1234,
                     backend: Optional[str] = None, timeout_minutes: int = 30,
                     device: Optional[str] = None) -> None:
    """Join the job described by torchrun's env vars (RANK, WORLD_SIZE, MASTER_ADDR/PORT,
    LOCAL_RANK; a lone process when absent), create the TP/PP/DP groups and seed every RNG.
    World size must be a multiple of tp x pp; the rest is data parallel.

    `device` ("cuda" or "cpu"; None: cuda when visible) must be the same on every rank: the
    ranks compare it through the rendezvous store before choosing NCCL or gloo, and all fail
    with one message when they differ (instead of hanging in mismatched backends)."""
    from pretrain.cpu_compat import apply_if_needed

    apply_if_needed()
    _default_env()      # before LOCAL_RANK is read: a lone process without it falls back to RANK
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    backend = backend or ("nccl" if device == "cuda" else "gloo")
    if device == "cuda":
        torch.cuda.set_device(local_device_index(torch.cuda.device_count()))
    from megatron.core import parallel_state

    if not torch.distributed.is_initialized():
        timeout = timedelta(minutes=timeout_minutes)
        store, rank, world = next(torch.distributed.rendezvous("env://", timeout=timeout))
        store.set_timeout(timeout)
        agree_on_device(store, rank, world, device)
        torch.distributed.init_process_group(backend=backend, store=PrefixStore("default_pg", store),
                                             rank=rank, world_size=world, timeout=timeout)
    world = torch.distributed.get_world_size()
    if world % (tp * pp):
        raise ValueError(f"world size {world} is not divisible by tp x pp = {tp} x {pp}")
    if vpp is not None and pp < 2:
        raise ValueError(f"vpp={vpp} needs pp > 1")
    parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        virtual_pipeline_model_parallel_size=vpp,
        distributed_timeout_minutes=timeout_minutes,
    )
    set_stage_seed(seed)


def set_stage_seed(seed: int) -> int:
    """Seed every RNG of this rank with `seed` + 100 x its pipeline stage (as Megatron does):
    stages holding only transformer layers would otherwise draw identical initial layers. The
    TP ranks of a stage share the seed (see set_seed). Returns the seed used."""
    from megatron.core import parallel_state, tensor_parallel

    stage_seed = seed + 100 * parallel_state.get_pipeline_model_parallel_rank()
    set_seed(stage_seed)
    tensor_parallel.model_parallel_cuda_manual_seed(stage_seed)
    return stage_seed


def local_device_index(device_count: int) -> int:
    """The GPU of this process: LOCAL_RANK modulo the visible GPUs (Slurm may bind one GPU per
    task, so every task sees its GPU as device 0)."""
    return int(os.environ.get("LOCAL_RANK", "0")) % max(device_count, 1)


def agree_on_device(store, rank: int, world: int, device: str) -> None:
    """Every rank announces its device in the rendezvous store; once all have, each checks that
    all chose the same, so that all choose the same backend. O(world) store operations."""
    from stack_common.errors import UserError

    prefix = f"pretrain/device/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/"
    store.add(prefix + device, 1)
    if store.add(prefix + "arrived", 1) == world:
        store.set(prefix + "done", "1")
    store.wait([prefix + "done"])
    counts = {d: store.add(prefix + d, 0) for d in ("cuda", "cpu")}
    if max(counts.values()) != world:
        raise UserError(f"ranks disagree on the device: {counts['cuda']} of {world} see CUDA, "
                        f"{counts['cpu']} run on the CPU (this is rank {rank}, on {device})",
                        field="training.device",
                        expected="every rank on the same device; training.device=cuda makes ranks "
                                 "without CUDA fail at once")


def set_seed(seed: int) -> None:
    """Same seed on every rank: with CPU initialization each rank draws the full weight and keeps
    its slice, so initial weights do not depend on the TP layout."""
    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def destroy() -> None:
    """Tear down megatron's groups and the default group. Waits for the other ranks first,
    except while an exception propagates (they may never arrive: no hang until the timeout)."""
    import sys

    from megatron.core import parallel_state

    parallel_state.destroy_model_parallel()
    if torch.distributed.is_initialized():
        if sys.exc_info()[0] is None:
            torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def _default_env() -> None:
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("LOCAL_RANK", os.environ["RANK"])
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        os.environ["MASTER_PORT"] = str(free_port())


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- local launcher

def run_local(world_size: int, fn: Callable, *args, timeout: float = 600.0, threads: int = 1) -> list:
    """Run `fn(rank, world_size, *args)` in `world_size` fresh processes (spawn) with torchrun's
    env vars set; return the per-rank return values (picklable). A failure in any rank raises
    RuntimeError with that rank's traceback. `fn` must be importable (module level)."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    port = free_port()
    procs = [ctx.Process(target=_rank_main, args=(rank, world_size, port, threads, fn, args, queue))
             for rank in range(world_size)]
    for p in procs:
        p.start()
    results, errors = {}, []
    try:
        for _ in range(world_size):
            rank, ok, value = _get(queue, procs, timeout)
            value = pickle.loads(value) if ok else value
            (results.__setitem__(rank, value) if ok else errors.append(f"rank {rank}:\n{value}"))
            if errors:
                break
    finally:
        for p in procs:
            p.join(timeout=5 if errors else 60)
            if p.is_alive():
                p.terminate()
                p.join()
    if errors:
        raise RuntimeError("a rank failed\n" + "\n".join(errors))
    return [results[r] for r in range(world_size)]


def _get(queue, procs, timeout: float):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not queue.empty():
            return queue.get()
        dead = [p for p in procs if p.exitcode not in (None, 0)]
        if dead:
            time.sleep(0.5)
            if not queue.empty():
                return queue.get()
            return procs.index(dead[0]), False, f"process exited with code {dead[0].exitcode}"
        time.sleep(0.05)
    raise TimeoutError(f"ranks did not finish within {timeout:.0f} s")


def _rank_main(rank, world_size, port, threads, fn, args, queue):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      LOCAL_WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(threads)
    try:
        # Plain pickle: tensors travel by value, not as shared memory of a process that exits.
        value = pickle.dumps(fn(rank, world_size, *args))
        queue.put((rank, True, value))
    except BaseException:
        queue.put((rank, False, traceback.format_exc()))
