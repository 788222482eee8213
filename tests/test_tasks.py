"""stack_common.tasks.run_tasks: the one process-pool policy (inline, spawned processes, Ray)."""
from __future__ import annotations

import os
import time

import pytest

from stack_common.errors import ConfigError, UserError
from stack_common.tasks import RayConfig, run_tasks, shared_workers

_state: dict = {}


def _remember(value: str) -> None:
    _state["value"] = value


def _slow_square(i: int, delay: float) -> tuple[int, int, str | None]:
    time.sleep(delay)
    return i * i, os.getpid(), _state.get("value")


def _fail_on(i: int, bad: int) -> int:
    if i == bad:
        raise ValueError(f"task {i} is bad")
    return i


def test_results_come_back_in_task_order_from_spawned_workers_with_their_initializer():
    # The first task sleeps longest, so it completes last: the results are still in task order.
    tasks = [(i, 0.6 - 0.1 * i) for i in range(6)]
    results = run_tasks(_slow_square, tasks, workers=2, initializer=_remember, initargs=("set in worker",))
    assert [r[0] for r in results] == [0, 1, 4, 9, 16, 25]
    assert len({r[1] for r in results}) == 2 and os.getpid() not in {r[1] for r in results}
    assert {r[2] for r in results} == {"set in worker"}
    assert "value" not in _state   # the initializer ran in the workers, not here


def test_shared_workers_serve_every_call_in_the_block_and_stop_at_its_end():
    with shared_workers():
        first = {r[1] for r in run_tasks(_slow_square, [(i, 0.2) for i in range(4)], workers=2)}
        second = {r[1] for r in run_tasks(_slow_square, [(i, 0.2) for i in range(4)], workers=2)}
    assert first == second and len(first) == 2
    for pid in first:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    outside = [{r[1] for r in run_tasks(_slow_square, [(i, 0.2) for i in range(4)], workers=2)} for _ in range(2)]
    assert not outside[0] & outside[1], "outside the block every call has its own workers"


def test_one_worker_runs_inline_after_the_initializer():
    results = run_tasks(_slow_square, [(3, 0.0), (4, 0.0)], workers=1, initializer=_remember, initargs=("inline",))
    assert results == [(9, os.getpid(), "inline"), (16, os.getpid(), "inline")]
    _state.clear()


def test_a_failing_task_raises_its_error():
    with pytest.raises(ValueError, match="task 2 is bad"):
        run_tasks(_fail_on, [(i, 2) for i in range(5)], workers=2)


def test_bad_executor_and_ray_settings_are_refused():
    with pytest.raises(UserError, match="unknown executor 'dask'"):
        run_tasks(_fail_on, [(1, 0)], executor="dask")
    with pytest.raises(ConfigError, match="ray.memory_per_task_mb: must be >= 0 \\(0: none\\), got -1"):
        RayConfig(memory_per_task_mb=-1)
