"""One way to run independent tasks: inline, on spawned local processes, or as Ray tasks.

`run_tasks(fn, tasks)` is `[fn(*t) for t in tasks]` whatever the executor: results come back in
task order, not completion order, so nothing downstream depends on scheduling. Tasks must be
idempotent (they publish their outputs atomically), because Ray re-runs a task whose worker or
node died. Local workers are spawned, never forked: the parent may hold threads (Ray, Arrow,
tokenizers) that fork would copy half-way.

Safety when things go wrong:
- A local worker ends as soon as its driver process is gone, however the driver died (SIGKILL
  included), so no orphan finishes an old task and publishes into the directory of a rerun
  (`_exit_with_parent`).
- With Ray, a task that fails for good makes `run_tasks` cancel its still pending or running
  siblings before it raises (Ray kills a running one's worker right after); an OSError is retried only when it is
  transient (`is_transient`: EIO, ETIMEDOUT, ECONNRESET, ESTALE, ...), never a permanent one
  (ENOENT, EACCES, ENOSPC, EROFS, ...), which would fail the same way every attempt.
"""
from __future__ import annotations

import contextlib
import errno
import importlib.util
import json
import multiprocessing
import os
import threading
import time
import uuid
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

from .atomic import atomic_write_text
from .errors import ConfigError, UserError
from .logging import get_logger
from .progress import progress

log = get_logger("stack_common.tasks")

EXECUTORS = ("local", "ray")


@dataclass
class RayConfig:
    """How tasks run on a Ray cluster (`executor=ray`); none of it changes a task's output."""
    cpus_per_task: float = 1.0
    memory_per_task_mb: int = 2048         # Ray `memory` resource; a node runs no more tasks than it holds; 0: none
    max_retries: int = 3                   # re-runs of a task whose worker or node died, or that raised a transient OSError
    packages: list[str] = field(default_factory=lambda: ["stack_common", "data_pipeline"])  # shipped to every node
    env_vars: dict[str, str] = field(default_factory=dict)   # set in every task's environment
    trace_dir: Optional[str] = None        # each task attempt writes a JSON record here: task, node, pid

    def __post_init__(self) -> None:
        problems = []
        if self.cpus_per_task <= 0:
            problems.append(f"ray.cpus_per_task: must be > 0, got {self.cpus_per_task}")
        if self.memory_per_task_mb < 0:
            problems.append(f"ray.memory_per_task_mb: must be >= 0 (0: none), got {self.memory_per_task_mb}")
        if self.max_retries < 0:
            problems.append(f"ray.max_retries: must be >= 0, got {self.max_retries}")
        if problems:
            raise ConfigError(problems)


_ray_config = RayConfig()
_placements: list[dict] = []


def configure_ray(cfg: RayConfig) -> RayConfig:
    """Set the Ray options of this process's later `run_tasks` calls (the runtime_env only takes
    effect if Ray is not yet initialised here); returns the previous options."""
    global _ray_config
    previous, _ray_config = _ray_config, cfg
    return previous


@contextlib.contextmanager
def ray_options(cfg: RayConfig) -> Iterator[None]:
    """`configure_ray(cfg)` for the duration of a block."""
    previous = configure_ray(cfg)
    try:
        yield
    finally:
        configure_ray(previous)


def ray_placements() -> list[dict]:
    """Where this process's Ray tasks ran: desc, index, node id, and the file their function came from."""
    return list(_placements)


def run_tasks(fn: Callable, tasks: Sequence[tuple], *, workers: int = 1, executor: str = "local",
              ray_address: str | None = None, desc: str = "", unit: str = "task",
              weights: Sequence[int] | None = None, initializer: Callable | None = None,
              initargs: tuple = ()) -> list:
    """`[fn(*t) for t in tasks]` inline (workers=1), on `workers` spawned processes, or as Ray tasks.

    `weights[i]` is how far task i advances the progress bar (e.g. its bytes; default 1).
    `initializer(*initargs)` runs once in every local worker process (or inline) before its tasks;
    Ray workers do not run it, so a function that needs it is local-only.
    """
    if executor not in EXECUTORS:
        raise UserError(f"unknown executor {executor!r}", field="executor", expected=" or ".join(EXECUTORS))
    tasks = [tuple(t) for t in tasks]
    weights = list(weights) if weights is not None else [1] * len(tasks)
    if not tasks:
        return []
    bar = progress(total=sum(weights), desc=desc, unit=unit)
    if unit == "B":
        bar.unit_scale = True
    with bar:
        if executor == "ray":
            if initializer is not None:
                raise ValueError("run_tasks: an initializer runs only in local workers")
            return _run_ray(fn, tasks, workers, ray_address, desc, lambda i: bar.update(weights[i]))
        if workers <= 1 or len(tasks) == 1:
            if initializer is not None:
                initializer(*initargs)
            results = []
            for i, task in enumerate(tasks):
                results.append(fn(*task))
                bar.update(weights[i])
            return results
        return _run_processes(fn, tasks, workers, initializer, initargs, lambda i: bar.update(weights[i]))


_pools: dict[int, ProcessPoolExecutor] = {}
_sharing = False


@contextlib.contextmanager
def shared_workers() -> Iterator[None]:
    """Within the block, spawned workers (slow to start: they import the tasks' modules) serve every
    `run_tasks` call without an initializer; they are stopped at its end, so no worker state (a
    cached model, say) outlives it. Outside such a block every call has its own workers."""
    global _sharing
    outer, _sharing = _sharing, True
    try:
        yield
    finally:
        _sharing = outer
        if not outer:
            for pool in list(_pools.values()):
                _drop_pool(pool)


def _pool(workers: int, initializer, initargs) -> ProcessPoolExecutor:
    spawn = multiprocessing.get_context("spawn")
    if initializer is not None or not _sharing:
        return ProcessPoolExecutor(max_workers=workers, mp_context=spawn, initializer=_start_worker,
                                   initargs=(initializer, initargs))
    if workers not in _pools:
        _pools[workers] = ProcessPoolExecutor(max_workers=workers, mp_context=spawn, initializer=_start_worker,
                                              initargs=(None, ()))
    return _pools[workers]


def _start_worker(initializer: Callable | None, initargs: tuple) -> None:
    """First thing in every spawned worker: tie its life to the driver's, then the caller's initializer."""
    _exit_with_parent()
    if initializer is not None:
        initializer(*initargs)


def _exit_with_parent(poll_s: float = 1.0) -> None:
    """End this worker (os._exit) as soon as the process that spawned it is gone, however it died.

    A daemon thread waits on multiprocessing's parent sentinel, a pipe whose write end only the
    parent process holds: it reads EOF the moment the parent exits or is killed (SIGKILL
    included). The parent pid is checked too (every `poll_s`), in case a fork of the parent
    inherited the pipe. Not prctl(PR_SET_PDEATHSIG): it fires when the *thread* that created
    the worker ends, and ProcessPoolExecutor (3.11) spawns workers from whichever thread calls
    `submit` (and replaces exited ones from its manager thread), so a shared pool created by a
    short-lived thread would lose its workers.
    """
    parent = multiprocessing.parent_process()
    if parent is None:          # not a spawned worker (inline run)
        return
    ppid = parent.pid

    def watch() -> None:
        while os.getppid() == ppid and parent.is_alive():
            parent.join(timeout=poll_s)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _drop_pool(pool: ProcessPoolExecutor) -> None:
    for key in [k for k, p in _pools.items() if p is pool]:
        del _pools[key]
    pool.shutdown(wait=True, cancel_futures=True)


def _run_processes(fn: Callable, tasks: list[tuple], workers: int, initializer, initargs,
                   done_hook: Callable[[int], None]) -> list:
    results: list[Any] = [None] * len(tasks)
    pool = _pool(min(workers, len(tasks)) if not _sharing else workers, initializer, initargs)
    pending: dict = {}
    try:
        pending = {pool.submit(fn, *task): i for i, task in enumerate(tasks)}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                i = pending.pop(future)
                results[i] = future.result()
                done_hook(i)
    except Exception as err:
        if isinstance(err, BrokenProcessPool):   # a worker died: its pool cannot run anything more
            _drop_pool(pool)
        for future in pending:
            future.cancel()
        raise
    except BaseException:                        # interrupted: stop the workers too
        _drop_pool(pool)
        raise
    finally:
        if pool not in _pools.values():
            pool.shutdown(wait=True, cancel_futures=True)
    return results


# ---- Ray ----------------------------------------------------------------------------------------

def package_dirs(packages: Sequence[str]) -> list[str]:
    """The directories of importable top-level packages (what runtime_env py_modules ships)."""
    dirs = []
    for name in packages:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise UserError(f"ray.packages: '{name}' is not an importable package", field="ray.packages")
        dirs.append(str(Path(list(spec.submodule_search_locations)[0]).resolve()))
    return dirs


def runtime_env(cfg: RayConfig) -> dict:
    env = {"py_modules": package_dirs(cfg.packages), "excludes": ["__pycache__", "*.pyc"]}
    if cfg.env_vars:
        env["env_vars"] = {str(k): str(v) for k, v in cfg.env_vars.items()}
    return env


def ensure_ray(address: str | None, num_cpus: int, cfg: RayConfig | None = None):
    """Connect to the cluster at `address` (or start a local one) with the packages' runtime_env;
    reuse a live connection."""
    import ray

    if not ray.is_initialized():
        env = runtime_env(cfg or _ray_config)
        if address:
            ray.init(address=address, runtime_env=env, log_to_driver=False)
        else:
            ray.init(num_cpus=max(1, num_cpus), runtime_env=env, include_dashboard=False, log_to_driver=False)
    return ray


def _check_fits(ray, cpus: float, memory: int) -> None:
    """A task that no live node can hold (CPUs and memory together) would wait forever: refuse it now."""
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if not any(r.get("CPU", 0) >= cpus and r.get("memory", 0) >= memory for r in nodes):
        largest = max((r.get("memory", 0) for r in nodes if r.get("CPU", 0) >= cpus), default=0)
        raise UserError(f"ray.memory_per_task_mb={memory >> 20} with ray.cpus_per_task={cpus} fits no node "
                        f"(the most memory on a node with {cpus} CPUs: {int(largest) >> 20} MiB)",
                        field="ray.memory_per_task_mb")


def _ray_call(fn: Callable, args: tuple, desc: str, index: int, trace_dir: str | None) -> tuple[Any, dict]:
    """Runs on a Ray worker: the task, plus where it ran (node id, the file `fn` was imported from)."""
    import sys

    import ray

    where = {"desc": desc, "index": index, "node": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
             "module_file": getattr(sys.modules.get(fn.__module__), "__file__", None)}
    if trace_dir:
        _trace(trace_dir, {**where, "event": "start", "time": time.time()})
    try:
        result = fn(*args)
    except OSError as err:
        if is_transient(err):
            raise TransientOSError(err.errno, err.strerror, err.filename, None, err.filename2) from err
        raise
    if trace_dir:
        _trace(trace_dir, {**where, "event": "end", "time": time.time()})
    return result, where


def _trace(trace_dir: str, record: dict) -> None:
    # Atomic: a reader listing the folder while tasks run sees whole records only.
    path = Path(trace_dir) / f"{record['node'][:12]}-{record['pid']}-{uuid.uuid4().hex[:8]}.json"
    atomic_write_text(path, json.dumps(record) + "\n")


def _run_ray(fn: Callable, tasks: list[tuple], workers: int, address: str | None, desc: str,
             done_hook: Callable[[int], None]) -> list:
    cfg = _ray_config
    ray = ensure_ray(address, workers, cfg)
    memory = cfg.memory_per_task_mb << 20
    options: dict = {"num_cpus": cfg.cpus_per_task, "max_retries": cfg.max_retries,
                     "retry_exceptions": [TransientOSError]}
    _check_fits(ray, cfg.cpus_per_task, memory)
    if memory:
        options["memory"] = memory
    remote = ray.remote(**options)(_ray_call)
    refs = [remote.remote(fn, task, desc, i, cfg.trace_dir) for i, task in enumerate(tasks)]
    index = {ref: i for i, ref in enumerate(refs)}
    results: list[Any] = [None] * len(tasks)
    pending = list(refs)
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                i = index[ref]
                results[i], where = ray.get(ref)
                _placements.append(where)
                done_hook(i)
    except BaseException:     # a task failed for good (or the driver was interrupted): stop its siblings
        _cancel(ray, pending, desc)
        raise
    return results


def _cancel(ray, refs: list, desc: str, wait_s: float = 60.0) -> None:
    """Cancel the tasks of `refs` and wait (up to `wait_s`) until Ray has recorded every one as
    ended; the worker of a running task is killed right after, asynchronously (force=True: safe for
    tasks that publish atomically, a rerun removes their temporary files; unlike KeyboardInterrupt it
    cannot be caught by the task). The cancel is repeated every second for tasks not yet ended: one
    whose worker was still starting can miss the first (seen after a node was replaced) and would
    otherwise run to its end."""
    if not refs:
        return
    running, deadline = list(refs), time.monotonic() + wait_s
    while running and time.monotonic() < deadline:
        for ref in running:
            ray.cancel(ref, force=True)
        _, running = ray.wait(running, num_returns=len(running), timeout=min(1.0, max(0.0, deadline - time.monotonic())))
    log.warning("%s: stopped; %d unfinished task(s) cancelled%s", desc or "run_tasks", len(refs),
                f", {len(running)} still running after {wait_s:.0f} s" if running else "")


# errnos of a failure that another attempt may not meet: I/O and network hiccups, stale NFS handles.
# Everything else (ENOENT, EACCES, ENOSPC, EROFS, EISDIR, ...) fails the same way every time.
TRANSIENT_ERRNOS = frozenset(getattr(errno, name) for name in (
    "EIO", "EAGAIN", "EINTR", "ETIMEDOUT", "ECONNRESET", "ECONNREFUSED", "ECONNABORTED", "EPIPE",
    "ENETDOWN", "ENETUNREACH", "ENETRESET", "EHOSTDOWN", "EHOSTUNREACH", "ESTALE", "EREMOTEIO",
) if hasattr(errno, name))


def is_transient(err: OSError) -> bool:
    """Whether a Ray task that raised `err` is worth another attempt. An OSError without an errno
    (pyarrow's S3/GCS errors) is not: those filesystems retry their transient errors themselves."""
    return err.errno in TRANSIENT_ERRNOS


class TransientOSError(OSError):
    """A transient OSError of a Ray task (the original is its __cause__): what Ray retries."""
