"""Peak memory of the partitioned exact and MinHash dedup at two corpus sizes and one budget.

    PYTHONPATH=. python bench/bench_dedup_memory.py --sizes 100000 400000 --budget-mb 64 --workers 2

Corpus: windows of ../shared/corpus documents (--chars characters), half of them perturbed copies and
a tenth verbatim copies (bench/dedup_data.py), in shards of about 8 MB. Each stage runs in a fresh
process; its stats.json gives the partition count and the driver's peak RSS after each step; the
stage process prints the peak RSS of its largest pool worker (getrusage of its children once the
stage's pools are shut down; spawned workers, so no pages shared with the driver).
Also printed: the bytes per document that an order range-sort task holds (id, quality, length as
Arrow, plus index, sort indices and rank), and the driver's RSS after imports (the floor of every figure).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from dedup_data import load_corpus, perturbed_copy  # noqa: E402

from data_pipeline.schema import DOC_SCHEMA  # noqa: E402
from stack_common.shards import ShardWriter  # noqa: E402

RUN = ("import json, sys; from pathlib import Path; from data_pipeline.dedup import GLOBAL_STAGES; "
       "GLOBAL_STAGES[sys.argv[1]](Path(sys.argv[2]), Path(sys.argv[3]), json.loads(sys.argv[4]), int(sys.argv[5]), "
       "'local', None); import resource; "
       "print('pool workers peak MB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)")
IMPORTS = "import resource, data_pipeline.dedup; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"


def build(out: Path, n_docs: int, chars: int, seed: int = 0) -> Path:
    if (out / "manifest.json").is_file():
        return out
    rng = random.Random(seed)
    base = [d for d in load_corpus() if len(d["text"]) >= chars]
    recent: list[str] = []
    with ShardWriter(out, DOC_SCHEMA, prefix="mem", target_bytes=8 << 20) as writer:
        rows = []
        for i in range(n_docs):
            if recent and rng.random() < 0.1:
                text = rng.choice(recent)
            else:
                d = base[rng.randrange(len(base))]
                start = rng.randrange(max(1, len(d["text"]) - chars))
                text = d["text"][start:start + chars]
                if rng.random() < 0.5:
                    text = perturbed_copy(text, "en" if d["lang"] == "en" else "zh", rng)[0]
                recent = (recent + [text])[-1000:]
            rows.append({"id": f"m{i:09d}", "text": text, "lang": "en", "source": "mem",
                         "quality_score": round(rng.random(), 3), "annotations": "{}"})
            if len(rows) == 20_000:
                writer.write(pa.Table.from_pylist(rows, schema=DOC_SCHEMA))
                rows = []
        if rows:
            writer.write(pa.Table.from_pylist(rows, schema=DOC_SCHEMA))
    return out


def order_bytes_per_doc(work: Path, meta_dir: str) -> float:
    from data_pipeline.dedup.common import read_columns
    tables = [read_columns(p, ["id", "quality_score", "n_chars"]) for p in sorted((work / meta_dir).glob("*.arrow"))]
    meta = pa.concat_tables(tables)
    return meta.nbytes / len(meta) + 3 * 8


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 400_000])
    ap.add_argument("--budget-mb", type=float, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--chars", type=int, default=300)
    ap.add_argument("--stages", nargs="+", default=["exact_dedup", "minhash_dedup"])
    ap.add_argument("--dir", type=Path, default=Path("/tmp/bench_dedup_memory"))
    args = ap.parse_args()
    env = dict(os.environ, PYTHONPATH=str(REPO), BC_NO_PROGRESS="1", OMP_NUM_THREADS="1")
    floor = subprocess.run([sys.executable, "-c", IMPORTS], env=env, capture_output=True, text=True, check=True)
    print(f"driver RSS after imports: {float(floor.stdout):.0f} MB; budget {args.budget_mb} MB, "
          f"workers {args.workers}", flush=True)
    for n in args.sizes:
        src = build(args.dir / f"in-{n}", n, args.chars)
        for stage in args.stages:
            out = args.dir / f"out-{n}-{stage}-{args.budget_mb:g}"
            t0, before = time.time(), resource.getrusage(resource.RUSAGE_CHILDREN)
            done = subprocess.run([sys.executable, "-c", RUN, stage, str(src), str(out),
                                   json.dumps({"memory_budget_mb": args.budget_mb}), str(args.workers)], env=env,
                                  check=True, stdout=subprocess.PIPE, text=True)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            stats = json.loads((out / "stats.json").read_text())
            peaks = stats["peak_rss_mb"]
            steps = peaks if "driver" not in peaks else {"all": peaks}
            driver = max(p["driver"] for p in steps.values())
            tasks = float(done.stdout.strip().splitlines()[-1].rsplit(" ", 1)[1])
            order = order_bytes_per_doc(out / "work", "meta" if stage == "exact_dedup" else "signatures")
            cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
            print(f"{stage:13s} docs={n:8d} partitions={stats['partitions']:4d} wall={time.time() - t0:6.1f}s "
                  f"cpu={cpu:6.1f}s peak driver={driver:6.0f} MB task={tasks:6.0f} MB "
                  f"excluded={sum(stats['excluded'].values())} order_ranges={stats['order_ranges']} sort={order:.0f} B/doc", flush=True)
            print("   per step:", json.dumps(steps), flush=True)


if __name__ == "__main__":
    main()
