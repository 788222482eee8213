"""Executors: run independent units on local worker processes or on a Ray cluster.

Both call the same function with the same arguments; each unit writes its own directory, so
the result does not depend on the executor, the worker count or the completion order.
"""
from __future__ import annotations

import multiprocessing
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Callable

from stack_common.progress import progress


def run_units(fn: Callable, tasks: list[tuple], workers: int, executor: str, ray_address: str | None,
              desc: str = "units") -> list:
    if not tasks:
        return []
    if executor == "ray":
        return _run_ray(fn, tasks, workers, ray_address, desc)
    if workers == 1:
        return [fn(*task) for task in progress(tasks, desc=desc, unit="unit")]
    return _run_processes(fn, tasks, workers, desc)


def _run_processes(fn: Callable, tasks: list[tuple], workers: int, desc: str) -> list:
    # spawn, not fork: the parent may hold threads (Ray, Arrow) that fork would copy half-way.
    context = multiprocessing.get_context("spawn")
    results = [None] * len(tasks)
    with ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=context) as pool, \
            progress(total=len(tasks), desc=desc, unit="unit") as bar:
        pending = {pool.submit(fn, *task): i for i, task in enumerate(tasks)}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                results[pending.pop(future)] = future.result()
                bar.update(1)
    return results


def ensure_ray(address: str | None, num_cpus: int):
    """Connect to the cluster at `address`, or start a local one; reuse a live connection."""
    import ray

    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    return ray


def _run_ray(fn: Callable, tasks: list[tuple], workers: int, address: str | None, desc: str) -> list:
    ray = ensure_ray(address, workers)
    remote = ray.remote(num_cpus=1, max_retries=2)(fn)
    refs = [remote.remote(*task) for task in tasks]
    index = {ref: i for i, ref in enumerate(refs)}
    results = [None] * len(tasks)
    pending = list(refs)
    with progress(total=len(tasks), desc=desc, unit="unit") as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                results[index[ref]] = ray.get(ref)
                bar.update(1)
    return results
