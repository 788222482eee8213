"""The dedup stages' task runner: `stack_common.tasks.run_tasks` (kept importable here)."""
from stack_common.tasks import EXECUTORS, run_tasks

__all__ = ["EXECUTORS", "run_tasks"]
