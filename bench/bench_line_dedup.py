"""Line dedup at two sizes: wall time, peak RSS of the driver and of the largest task, partitions
(print figures; assert nothing). Corpora: bench/dedup_data.build_scale (windows of ../shared/corpus,
half of them perturbed copies), resharded into ~8 MB shards so that tasks spread over workers.

    .venv/bin/python bench/bench_line_dedup.py --sizes 100000 400000 --workers 2 --budget-mb 1024 16
With --reference-tree DIR (a checkout of another commit, e.g. `git archive d5d4122 | tar -x -C DIR`;
may be given more than once) the same stage also runs with DIR's code (with the first budget when
DIR's line dedup has one), and kept/ and excluded/ are compared record by record (rows and
`records_sha256`, which does not depend on the shards' codec or file splits).
With --footer every document ends with the same boilerplate line (a skewed corpus: one key held by
every document, which a keeper task must not hold one row per document of).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))

import pyarrow.compute as pc  # noqa: E402
from dedup_data import build_scale  # noqa: E402

import numpy as np  # noqa: E402

from stack_common.shards import read_arrow, read_manifest, read_table, records_sha256, write_table  # noqa: E402

# Run in a child process so that the driver's peak RSS is the stage's alone: VmHWM of the driver
# (ru_maxrss would carry over the launching process's peak across exec); ru_maxrss of the children
# is the largest pool worker (each pool is joined when its step ends; a forked worker starts with
# the driver's resident pages).
RUN_STAGE = """
import json, resource, sys
from pathlib import Path
import psutil
from data_pipeline.dedup import GLOBAL_STAGES
def vm_hwm():
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM:"))
baseline = psutil.Process().memory_info().rss     # the imports, before the stage
src, out, workers, cfg = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
stats = GLOBAL_STAGES["line_dedup"](src, out, cfg, workers, "local", None)
rss = {"driver": vm_hwm(), "task": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024}
print(json.dumps({**stats, "peak_rss": {**rss, "driver_after_imports": baseline}}))
"""


FOOTER = "\nCopyright the example company and its partners. All rights reserved worldwide.\n"


def corpus(root: Path, n_docs: int, footer: bool = False) -> Path:
    data = root / f"corpus-{n_docs}{'-footer' if footer else ''}"
    if not (data / "manifest.json").is_file():
        t = time.time()
        raw = root / f"raw-{n_docs}"
        shutil.rmtree(raw, ignore_errors=True)
        build_scale(raw, n_docs)
        shutil.rmtree(data, ignore_errors=True)
        table = read_table(raw)
        if footer:
            table = table.set_column(table.schema.get_field_index("text"), "text",
                                     pc.binary_join_element_wise(table.column("text"), FOOTER, ""))
        write_table(data, table, prefix="part", target_bytes=8 << 20)
        shutil.rmtree(raw)
        print(f"built {n_docs} documents in {time.time() - t:.0f}s", flush=True)
    return data


def run_stage(tree: Path, data: Path, out: Path, workers: int, cfg: dict) -> tuple[float, dict]:
    shutil.rmtree(out, ignore_errors=True)
    t = time.time()
    proc = subprocess.run([sys.executable, "-c", RUN_STAGE, str(data), str(out), str(workers), json.dumps(cfg)],
                          cwd=tree, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(tree), "BC_NO_PROGRESS": "1"})
    if proc.returncode != 0:
        raise SystemExit(f"line dedup failed ({tree}):\n{proc.stderr[-3000:]}")
    return time.time() - t, json.loads(proc.stdout.strip().splitlines()[-1])


def largest_keeper_task(out: Path, parts: int) -> int:
    """Rows the largest keeper task held: holder rows (one per key and shard) where the run wrote
    work/holders1/, else (key, document) pairs from work/units/."""
    rows = "holders1" if (out / "work" / "holders1").is_dir() else "units"
    keys = [read_arrow(f).column("key").to_numpy() for f in sorted((out / "work" / rows).glob("*.arrow"))]
    if not keys:
        return 0
    keys = np.sort(np.concatenate(keys))
    bounds = np.searchsorted(keys, np.array([(p << 64) // parts for p in range(parts)] + [0], np.uint64))
    bounds[-1] = len(keys)
    return int(np.diff(bounds).max())


def output_digest(out: Path) -> dict[str, tuple[int, str]]:
    return {sub: (read_manifest(out / sub)["rows"], records_sha256(out / sub)) for sub in ("kept", "excluded")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 400_000])
    ap.add_argument("--budget-mb", type=int, nargs="+", default=[1024])
    ap.add_argument("--unit", default="paragraph", choices=["paragraph", "sentence"])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--reference-tree", action="append", default=[],
                    help="checkout whose line dedup output must be identical (repeatable)")
    ap.add_argument("--footer", action="store_true", help="append one boilerplate line to every document")
    ap.add_argument("--out", default=str(REPO / "bench_out" / "line_dedup"))
    args = ap.parse_args()
    root = Path(args.out)
    rows = []
    for n in args.sizes:
        data = corpus(root, n, args.footer)
        runs = [("this", REPO, b) for b in args.budget_mb]
        runs += [(f"ref{i}", Path(tree), args.budget_mb[0]) for i, tree in enumerate(args.reference_tree)]
        digests = {}
        for name, tree, budget in runs:
            out = root / f"out-{n}-{name}-{budget}"
            has_budget = "memory_budget_mb" in (tree / "data_pipeline/dedup/lines.py").read_text()
            cfg = {"unit": args.unit, **({"memory_budget_mb": budget} if has_budget else {})}
            seconds, stats = run_stage(tree, data, out, args.workers, cfg)
            digests[(name, budget)] = output_digest(out)
            stats["keeper_rows"] = largest_keeper_task(out, stats.get("partitions", 1))
            rows.append((n, name, budget, stats.get("partitions", "-"), seconds, stats["peak_rss"]["driver"],
                         stats["peak_rss"]["task"], stats["bytes_in"], stats["repeated_units"],
                         stats["peak_rss"]["driver_after_imports"]))
            print(json.dumps({"docs": n, "code": name, "budget_mb": budget, "wall_s": round(seconds, 1),
                              **{k: stats[k] for k in ("partitions", "keeper_rows", "step_seconds", "peak_rss")
                                 if k in stats}}),
                  flush=True)
        first = next(iter(digests.values()))
        print(f"{n} docs: kept/ and excluded/ identical across runs: "
              f"{all(d == first for d in digests.values())} ({first['kept'][0]} kept rows)", flush=True)
    print(f"\n{'docs':>7} {'code':9} {'budget MB':>9} {'parts':>5} {'wall s':>7} {'driver MiB':>10} {'task MiB':>9} "
          f"{'text MB':>8} {'repeated':>9}   (driver RSS after imports: {rows[0][-1] / 2**20:.0f} MiB)")
    for n, name, budget, parts, seconds, driver, task, text_bytes, repeated, _ in rows:
        print(f"{n:7d} {name:9} {budget:9d} {parts!s:>5} {seconds:7.1f} {driver / 2**20:10.0f} {task / 2**20:9.0f} "
              f"{text_bytes / 1e6:8.0f} {repeated:9d}")


if __name__ == "__main__":
    main()
