"""Peak memory of MinHash step 6: the component tasks (components.py) against the driver merge they
replace, on synthetic links.

    PYTHONPATH=. python bench/bench_components.py --links 1000000,4000000 --budgets 32,128 \\
        --reference /tmp/ref          # a checkout with the driver merge (minhash._merge_clusters), optional

Links: clusters of 2-10 documents over 2.5 x links ranks (ranks = documents), each cluster's edges a
random spanning tree spread over as many verify partitions as the stage would have (18 bands, the
budget) and reduced to stars per partition as the verify step does (so components cross partitions
and need several rounds); input shards of 250,000 documents with ids; decisions in as many rank ranges. Each
measurement runs in a fresh process: `new` runs link_components (the phases) then
write_component_clusters (members, survivor ids, groups, decisions), each with its own 2 pool
workers, and prints each pool's largest worker peak RSS (VmHWM) beside a process that only imported
components.py, and the driver's growth (ru_maxrss); `old` runs the reference's _merge_clusters (its
decisions' range tasks in 2 workers) and prints the same.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa

from data_pipeline.dedup.common import partition_count
from data_pipeline.dedup.minhash import BYTES_PER_BAND_KEY

DOCS_PER_SHARD = 250_000
SETUP = """
import sys, numpy as np, pyarrow as pa
from pathlib import Path
from data_pipeline.dedup.common import write_arrow
from data_pipeline.dedup.unionfind import linked_components
work, n_links, parts = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(0)
n_docs = int(2.5 * n_links)
sizes = rng.integers(2, 11, n_links)
sizes = sizes[:np.searchsorted(np.cumsum(sizes - 1), n_links)]      # a cluster of k has k - 1 tree edges
members = rng.permutation(n_docs)[:sizes.sum()]
start = np.repeat(np.cumsum(sizes) - sizes, sizes - 1)              # first member of each edge's cluster
pos = np.concatenate([np.arange(1, k) for k in sizes])              # member index within its cluster
a = members[start + pos]
b = members[start + (rng.random(len(pos)) * pos).astype(np.int64)]  # an earlier member: a tree
part = rng.integers(0, parts, len(a))
for p in range(parts):
    nodes, roots = linked_components(a[part == p], b[part == p])
    moved = nodes != roots
    t = pa.table({"node": nodes[moved], "root": roots[moved], "node_doc": nodes[moved], "root_doc": roots[moved]})
    write_arrow(work / "links" / f"part-{p:05d}.arrow", t)
shards = max(1, n_docs // DOCS_PER_SHARD)
for s in range(shards):
    lo, hi = s * n_docs // shards, (s + 1) * n_docs // shards
    write_arrow(work / "signatures" / f"s{s}.arrow", pa.table({"id": pa.array(np.char.add("doc", np.arange(lo, hi).astype(str)))}))
print(n_docs)
"""

MEASURE = """
import json, os, resource, sys, time
from pathlib import Path


def workers_peak_mb():
    # largest VmHWM of this process's children (the pool workers): their peak since exec, without
    # the pages they shared with the driver between fork and exec (which ru_maxrss counts)
    pids = {p for t in os.listdir("/proc/self/task") for p in open(f"/proc/self/task/{t}/children").read().split()}
    peaks = [int(line.split()[1]) for p in pids for line in open(f"/proc/{p}/status") if line.startswith("VmHWM")]
    return max(peaks, default=0) / 1024

which, work, n_docs, budget = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
from data_pipeline.dedup.common import Shard
n = max(1, n_docs // DOCS_PER_SHARD)
shards = [Shard(s, work, f"s{s}", s * n_docs // n, (s + 1) * n_docs // n - s * n_docs // n) for s in range(n)]
ranges = len(list((work / "links").glob("part-*.arrow")))   # the stage's partitions: verify's, and rank ranges
par = dict(workers=2, executor="local", ray_address=None)
maxrss = lambda who: resource.getrusage(who).ru_maxrss / 1024
from data_pipeline.dedup import minhash
from stack_common.tasks import shared_workers
links = sorted((work / "links").glob("part-*.arrow"))
base, t0, comp, peaks = maxrss(resource.RUSAGE_SELF), time.time(), {}, {}
if which == "new":                      # one pool per part, each for all its steps, as in a pipeline run
    from data_pipeline.dedup.components import link_components, write_component_clusters
    with shared_workers():
        comp = link_components(work, links, budget, "bench", **par)
        peaks["phases"] = workers_peak_mb()
    with shared_workers():
        write_component_clusters(work, shards, links, work / "signatures", ranges, budget, "bench", **par)
        peaks["clusters"] = workers_peak_mb()
else:
    with shared_workers():
        minhash._merge_clusters(work, shards, ranges, budget, "bench", **par)
        peaks["decisions"] = workers_peak_mb()
print(json.dumps({**comp, "driver_growth_mb": maxrss(resource.RUSAGE_SELF) - base, "seconds": time.time() - t0,
                  "workers_mb": peaks, "clusters": json.load(open(work / "decisions.json"))["clusters"]}))
"""

IDLE_WORKER = """
import data_pipeline.dedup.components  # noqa: F401 (what a component task imports)
print(int([line for line in open("/proc/self/status") if line.startswith("VmHWM")][0].split()[1]) / 1024)
"""


def python(code: str, *args, path: Path) -> str:
    env = {"PYTHONPATH": str(path), "BC_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    code = code.replace("DOCS_PER_SHARD", str(DOCS_PER_SHARD))
    done = subprocess.run([sys.executable, "-c", code, *map(str, args)], env=env, cwd=path, capture_output=True,
                          text=True)
    if done.returncode:
        raise SystemExit(f"failed in {path}:\n{done.stderr[-3000:]}")
    return done.stdout.strip().splitlines()[-1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--links", default="1000000,4000000", help="comma-separated link counts")
    ap.add_argument("--budgets", default="32,128", help="comma-separated memory_budget_mb")
    ap.add_argument("--reference", type=Path, help="a checkout with the driver merge, for the `old` figures")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/bench_components"))
    args = ap.parse_args()
    repo = Path(__file__).resolve().parents[1]
    print(f"a process that imported components.py: {float(python(IDLE_WORKER, path=repo)):.0f} MiB", flush=True)
    for n_links in map(int, args.links.split(",")):
        n_docs = int(2.5 * n_links)
        for k, budget in enumerate(map(float, args.budgets.split(","))):
            shutil.rmtree(args.dir, ignore_errors=True)
            parts = partition_count(n_docs * 18, BYTES_PER_BAND_KEY, budget)     # the stage's, with 18 bands
            python(SETUP, args.dir / "new", n_links, parts, path=repo)
            links = sum(pa.ipc.open_file(pa.memory_map(str(f))).read_all().num_rows
                        for f in (args.dir / "new" / "links").glob("*.arrow"))
            runs = [("new", repo)]
            if args.reference and k == 0:
                shutil.copytree(args.dir / "new", args.dir / "old")
                runs.append(("old", args.reference))
            for which, code in runs:
                r = json.loads(python(MEASURE, which, args.dir / which, n_docs, budget, path=code))
                shape = f"{r['partitions']} partitions x {r['rounds']} rounds, " if which == "new" else ""
                print(f"{which}: {links} links ({n_docs} docs, {r['clusters']} clusters, {parts} link files), "
                      f"budget {budget:g} MB: {shape}largest worker "
                      f"{', '.join(f'{k} {v:.0f}' for k, v in r['workers_mb'].items())} MiB, "
                      f"driver grew {r['driver_growth_mb']:.0f} MiB, {r['seconds']:.0f} s", flush=True)
    shutil.rmtree(args.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
