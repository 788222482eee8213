"""Run independent tasks on local processes or on a Ray cluster; results come back in task order."""
from __future__ import annotations

import multiprocessing as mp
from typing import Any, Callable, Sequence

from stack_common.errors import UserError
from stack_common.progress import progress

EXECUTORS = ("local", "ray")


def _call(job: tuple[Callable, tuple]) -> Any:
    fn, args = job
    return fn(*args)


def run_tasks(fn: Callable, tasks: Sequence[tuple], *, workers: int = 1, executor: str = "local",
              ray_address: str | None = None, desc: str = "") -> list:
    """`[fn(*t) for t in tasks]`, spread over `workers` processes or Ray tasks."""
    if executor not in EXECUTORS:
        raise UserError(f"unknown executor {executor!r}", field="executor", expected=" or ".join(EXECUTORS))
    if executor == "ray":
        return _run_ray(fn, tasks, workers, ray_address, desc)
    if workers <= 1 or len(tasks) <= 1:
        return [fn(*t) for t in progress(tasks, desc=desc, unit="task")]
    with mp.get_context("fork").Pool(min(workers, len(tasks))) as pool:
        jobs = [(fn, tuple(t)) for t in tasks]
        return list(progress(pool.imap(_call, jobs), total=len(jobs), desc=desc, unit="task"))


def _run_ray(fn: Callable, tasks: Sequence[tuple], workers: int, address: str | None, desc: str) -> list:
    import ray

    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=max(1, workers), include_dashboard=False, log_to_driver=False)
    remote = ray.remote(num_cpus=1)(fn)
    refs = [remote.remote(*t) for t in tasks]
    out = []
    for ref in progress(refs, desc=desc, unit="task"):
        out.append(ray.get(ref))
    return out
