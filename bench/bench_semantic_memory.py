"""Peak memory of the partitioned semantic_dedup and cluster_balance at two corpus sizes and one budget.

    PYTHONPATH=. python bench/bench_semantic_memory.py --sizes 10000 40000 --budget-mb 64 --workers 2

Corpus: bench_dedup_memory.build (windows of ../shared/corpus documents, perturbed and verbatim
copies, shards of about 8 MB). semantic_dedup runs on it, cluster_balance on semantic_dedup's kept
documents, each stage in a fresh process with `memory_budget_mb` = --budget-mb; stats.json gives
the partition counts and the peak RSS of the driver after each step; the largest worker's peak is
read when the stage has returned (its shared workers are reaped only then). A step with a single
task runs it in the driver, so use sizes of several 8 MB shards.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from bench_dedup_memory import IMPORTS, RUN, build  # noqa: E402

# After the stage returns its workers are stopped and reaped, so RUSAGE_CHILDREN is their peak.
PEAKS = RUN + "; from data_pipeline.dedup.common import peak_rss_mb; print(json.dumps(peak_rss_mb()))"


def run_stage(stage: str, src: Path, out: Path, conf: dict, workers: int, env: dict) -> tuple[dict, float, float]:
    t0, before = time.time(), resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run([sys.executable, "-c", PEAKS, stage, str(src), str(out), json.dumps(conf), str(workers)],
                          env=env, check=True, capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    stats = json.loads((out / "stats.json").read_text())
    stats["peak_rss_mb"]["stage end"] = json.loads(done.stdout.strip().splitlines()[-1])
    return stats, time.time() - t0, cpu


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 40_000])
    ap.add_argument("--budget-mb", type=float, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--chars", type=int, default=300)
    ap.add_argument("--kmeans-docs", type=int, default=100_000)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/bench_semantic_memory"))
    args = ap.parse_args()
    env = dict(os.environ, PYTHONPATH=str(REPO), BC_NO_PROGRESS="1", OMP_NUM_THREADS="1")
    floor = subprocess.run([sys.executable, "-c", IMPORTS], env=env, capture_output=True, text=True, check=True)
    print(f"driver RSS after imports: {float(floor.stdout):.0f} MB; budget {args.budget_mb} MB, "
          f"workers {args.workers}", flush=True)
    for n in args.sizes:
        src = build(args.dir / f"in-{n}", n, args.chars)
        for stage in ("semantic_dedup", "cluster_balance"):
            conf = {"memory_budget_mb": args.budget_mb}
            if stage == "semantic_dedup":
                conf["kmeans_docs"] = args.kmeans_docs
            out = args.dir / f"out-{n}-{stage}-{args.budget_mb:g}"
            stats, wall, cpu = run_stage(stage, src, out, conf, args.workers, env)
            peaks = stats["peak_rss_mb"]
            driver = max(p["driver"] for p in peaks.values())
            tasks = max(p["tasks"] for p in peaks.values())
            print(f"{stage:15s} docs={n:8d} partitions={stats['partitions']:4d} "
                  f"order_ranges={stats['order_ranges']} wall={wall:6.1f}s cpu={cpu:6.1f}s "
                  f"peak driver={driver:6.0f} MB task={tasks:6.0f} MB excluded={sum(stats['excluded'].values())} "
                  f"clusters={stats['clusters']}", flush=True)
            print("   per step:", json.dumps(peaks), flush=True)
            src = out / "kept"


if __name__ == "__main__":
    main()
