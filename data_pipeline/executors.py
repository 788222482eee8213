"""Executors of the pipeline's units: `stack_common.tasks` (kept importable under the old names)."""
from __future__ import annotations

from typing import Callable

from stack_common.tasks import ensure_ray, run_tasks

__all__ = ["ensure_ray", "run_units"]


def run_units(fn: Callable, tasks: list[tuple], workers: int, executor: str, ray_address: str | None,
              desc: str = "units") -> list:
    return run_tasks(fn, tasks, workers=workers, executor=executor, ray_address=ray_address, desc=desc, unit="unit")
