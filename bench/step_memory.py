"""Which step of a running `python -m data_pipeline` holds its peak memory.

    python bench/step_memory.py OUT/run-dir steps.json

Every second: the RSS of the driver writing to `output=RUN-DIR` and of its largest descendant, keyed
by the newest stage directory and the newest entry of its work/ with its entry count (for line_dedup,
"docs:20" = the units step done with 20 shards, the count step running). Every 30 s the peaks per key
go to the JSON file (atomically). Runs until killed; start it before or during the run.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from stack_common.atomic import atomic_write_json  # noqa: E402


def newest(path: Path) -> Path | None:
    try:
        return max(path.iterdir(), key=lambda p: p.stat().st_mtime, default=None)
    except OSError:
        return None


def step_of(run: Path) -> str:
    """'<stage dir>|<newest work/ entry>:<its entries>', '-' where there is none yet."""
    stages = run / "stages"
    stage = max(stages.iterdir(), default=None) if stages.is_dir() else None
    if stage is None:
        return "-|-"
    entry = newest(stage / "work") if (stage / "work").is_dir() else None
    if entry is None:
        return f"{stage.name}|-"
    try:
        count = len(os.listdir(entry)) if entry.is_dir() else 0
    except OSError:
        count = 0
    return f"{stage.name}|{entry.name}:{count}"


def drivers(run: Path) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if "data_pipeline" in cmd and f"output={run}" in cmd:
            found.append(p)
    return found


def main() -> None:
    run, out = Path(sys.argv[1]), Path(sys.argv[2])
    peaks: dict[str, dict] = {}
    last = 0.0
    while True:
        for driver in drivers(run):
            try:
                rss = driver.memory_info().rss
                workers = [c.memory_info().rss for c in driver.children(recursive=True)]
                key = step_of(run)
            except (psutil.Error, OSError):
                continue
            peak = peaks.setdefault(key, {"driver_mib": 0, "worker_mib": 0, "samples": 0})
            peak["driver_mib"] = max(peak["driver_mib"], rss >> 20)
            peak["worker_mib"] = max(peak["worker_mib"], max(workers, default=0) >> 20)
            peak["samples"] += 1
        if time.time() - last > 30:
            atomic_write_json(out, peaks)
            last = time.time()
        time.sleep(1)


if __name__ == "__main__":
    main()
