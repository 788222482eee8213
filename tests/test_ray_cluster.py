"""The data pipeline on a multi-node Ray cluster started on this machine (tests/conftest.py
`ray_cluster`, once per session): tasks of every stage, the global dedup stages included, run on
several nodes, the output is byte-identical to the local executor's, and a worker node removed in
the middle of a stage costs a retry, not a different result."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import ray

from data_pipeline.__main__ import execute, load_config
from stack_common.errors import UserError
from stack_common.shards import read_manifest
from stack_common.tasks import ray_placements

REPO = Path(__file__).resolve().parents[1]
STAGES = "stages=[normalize,clean_lines,filter,exact_dedup,minhash_dedup,line_dedup]"
GLOBAL = ("exact_dedup", "minhash_dedup", "line_dedup")

pytestmark = pytest.mark.slow


def run(raw_web: Path, out: Path, *overrides: str) -> dict:
    return execute(load_config([f"input={raw_web}/*.jsonl*", f"output={out}", STAGES, *overrides]))


def without_timings(value):
    """Stats less what is measured rather than decided: seconds and peak memory."""
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if "seconds" not in k and "peak_rss" not in k}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def run_digest(out: Path) -> dict:
    """sha256 of every kept, excluded and quarantined shard (by path), and the run's stats without timings."""
    shards = {}
    for manifest in sorted(out.rglob("manifest.json")):
        for entry in read_manifest(manifest.parent)["files"]:
            shards[str(manifest.parent.relative_to(out) / entry["name"])] = entry["sha256"]
    return {"shards": shards, "stats": without_timings(json.loads((out / "stats.json").read_text()))}


@pytest.fixture(scope="module")
def local_reference(raw_web, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("local") / "out"
    stats = run(raw_web, out, "workers=1")
    assert [s["stage"] for s in stats["stages"]][-3:] == list(GLOBAL)
    assert all(s["excluded"] for s in stats["stages"] if s["stage"] in GLOBAL), "every dedup stage removes something"
    return run_digest(out)


def read_trace(trace_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(trace_dir.glob("*.json"))]


def test_every_stage_runs_on_several_nodes_with_the_local_result(ray_cluster, raw_web, local_reference, tmp_path):
    before = len(ray_placements())
    out = tmp_path / "ray"
    run(raw_web, out, *ray_cluster.overrides(), "workers=4", f"ray.trace_dir={tmp_path / 'trace'}")
    assert run_digest(out) == local_reference

    placements = ray_placements()[before:]
    nodes = {p["node"] for p in placements}
    worker_nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU")}
    assert len(nodes) >= 2 and nodes <= worker_nodes, "tasks ran on the worker nodes, never on the 0-CPU head"
    for stage in GLOBAL:
        assert any(p["desc"].startswith(stage) for p in placements), f"{stage} ran as Ray tasks"
    # The code came from the runtime_env (py_modules), not from this checkout on a shared path.
    files = {p["module_file"] for p in placements}
    assert files and not any(f.startswith(str(REPO) + "/") for f in files), sorted(files)[:3]
    assert any("/data_pipeline/dedup/" in f for f in files) and any("/data_pipeline/unit.py" in f for f in files)

    # 1 GiB per task on nodes of 1 GiB and 2 CPUs: no two tasks ever overlapped on a node.
    spans: dict[tuple, dict] = {}
    for r in read_trace(tmp_path / "trace"):
        spans.setdefault((r["node"], r["pid"], r["desc"], r["index"]), {})[r["event"]] = r["time"]
    by_node: dict[str, list] = {}
    for (node, *_), s in spans.items():
        by_node.setdefault(node, []).append((s["start"], s["end"]))
    assert len(spans) == len(placements)
    for node, intervals in by_node.items():
        intervals.sort()
        assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(intervals, intervals[1:])), node


def test_a_node_removed_mid_stage_costs_a_retry_not_the_result(ray_cluster, raw_web, local_reference, tmp_path):
    """The worker node that starts the first MinHash task is removed while it runs it; a new node
    takes its place afterwards (the cluster is shared by the session's Ray tests)."""
    trace = tmp_path / "trace"
    removed, stop = threading.Event(), threading.Event()
    victim_ids: list[str] = []

    errors: list[BaseException] = []

    def remove_the_node_running_minhash():
        try:
            watch_and_remove()
        except BaseException as err:  # shown by the assertion below, not lost in the thread
            errors.append(err)

    def watch_and_remove():
        while not stop.is_set():
            started = [r for r in read_trace(trace) if r["event"] == "start" and r["desc"].startswith("minhash_dedup")]
            if started:
                victim_ids.append(started[0]["node"])
                victim = next(n for n in ray_cluster.cluster.worker_nodes if n.node_id == victim_ids[0])
                ray_cluster.cluster.remove_node(victim)
                removed.set()
                return
            time.sleep(0.02)

    killer = threading.Thread(target=remove_the_node_running_minhash, daemon=True)
    killer.start()
    out = tmp_path / "ray"
    try:
        run(raw_web, out, *ray_cluster.overrides(), "workers=4", f"ray.trace_dir={trace}")
    finally:
        stop.set()
        killer.join(timeout=10)
        if removed.is_set():
            ray_cluster.add_node()
    assert not errors, f"the thread removing the node failed: {errors[0]!r}"
    assert removed.is_set(), "the node running the first MinHash task was removed"
    victim_id = victim_ids[0]
    assert run_digest(out) == local_reference

    records = read_trace(trace)
    cut = [(r["desc"], r["index"]) for r in records if r["node"] == victim_id and r["event"] == "start"
           and not any(e["node"] == victim_id and e["pid"] == r["pid"] and e["event"] == "end"
                       and (e["desc"], e["index"]) == (r["desc"], r["index"]) for e in records)]
    assert cut, "a task was running on the victim when it was removed"
    for task in cut:
        assert any((r["desc"], r["index"]) == task and r["node"] != victim_id and r["event"] == "end"
                   for r in records), f"{task} was retried on another node and finished"


def test_task_memory_larger_than_any_node_is_refused(ray_cluster, raw_web, tmp_path):
    expected = (r"memory_per_task_mb=4096 with ray.cpus_per_task=1.0 fits no node "
                r"\(the most memory on a node with 1.0 CPUs: 1024 MiB")
    with pytest.raises(UserError, match=expected):
        run(raw_web, tmp_path / "out", *ray_cluster.overrides(), "ray.memory_per_task_mb=4096")


def test_two_local_workers_give_the_same_result_at_every_stage(raw_web, local_reference, tmp_path):
    run(raw_web, tmp_path / "two", "workers=2")
    assert run_digest(tmp_path / "two") == local_reference
