"""Driver memory of the cluster decisions (common.write_decisions) and task memory of the rank lookup.

    PYTHONPATH=. python bench/dedup_decisions_memory.py --docs 2000000 --workers 2

decisions: --docs documents, every one in a cluster of two, as 8 group partitions' cluster files
(common.write_clusters, written in a child process); the driver then runs write_decisions with its
tasks in a pool: its peak RSS growth per clustered document is printed (the per-range tasks hold one
range's rows each). ranks: one shard's slice of a --docs rank.npy (as common.add_ranks reads it)
against a gather of a hash partition's ranks (what a partition task did before), RSS growth of each.
"""
from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from data_pipeline.dedup.common import Shard, write_decisions

SETUP = """
import sys, numpy as np, pyarrow as pa, pyarrow.compute as pc
from pathlib import Path
from data_pipeline.dedup.common import write_clusters
work, n, parts = Path(sys.argv[1]), int(sys.argv[2]), 8
for p in range(parts):
    k = np.arange(p, n // 2, parts, dtype=np.int64)          # clusters (2k, 2k+1), spread over the corpus
    docs, roots = np.stack([2 * k, 2 * k + 1], axis=1).ravel(), np.repeat(2 * k, 2)   # ranks = documents
    write_clusters(work / "groups" / f"part-{p:05d}.arrow", docs, roots, roots,
                   pc.cast(pa.array(roots), pa.string()), n, parts)
"""


def rss_mb() -> float:
    return int(dict(line.split(":", 1) for line in open("/proc/self/status"))["VmRSS"].split()[0]) / 1024


def decisions(work: Path, n: int, workers: int) -> None:
    shutil.rmtree(work, ignore_errors=True)
    (work / "groups").mkdir(parents=True)
    subprocess.run([sys.executable, "-c", SETUP, str(work), str(n)], check=True)
    shards = [Shard(i, Path("x"), f"s{i}", i * (n // 8), n // 8) for i in range(8)]
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    clusters = write_decisions(work, shards, sorted((work / "groups").glob("*.arrow")), 8, "bench",
                               workers=workers, executor="local", ray_address=None)
    grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024
    tasks = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"decisions: {n} clustered docs, {clusters} clusters: driver peak grew {grew / 2**20:.1f} MiB "
          f"({grew / n:.2f} B/clustered doc); largest pool worker {tasks:.0f} MiB", flush=True)


def ranks(work: Path, n: int) -> None:
    path = work / "rank.npy"
    np.lib.format.open_memmap(path, mode="w+", dtype=np.int64, shape=(n,))[:] = np.arange(n)
    rank = np.load(path, mmap_mode="r")
    docs = np.sort(np.random.default_rng(0).choice(n, n // 200, replace=False))
    before = rss_mb()
    sliced = np.array(rank[n // 2:n // 2 + len(docs)])
    after_slice = rss_mb()
    gathered = rank[docs]
    print(f"ranks: {n} docs, {len(docs)} per task: shard slice RSS +{after_slice - before:.0f} MiB, "
          f"hash-partition gather +{rss_mb() - after_slice:.0f} MiB (rank.npy {n * 8 / 2**20:.0f} MiB)",
          len(sliced) == len(gathered))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=2_000_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/bench_dedup_decisions"))
    args = ap.parse_args()
    decisions(args.dir / "work", args.docs, args.workers)
    ranks(args.dir, args.docs * 10)
    shutil.rmtree(args.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
