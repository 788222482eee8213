"""One large input file, whole (reader.unit_mb=0) or cut into units (data_pipeline/input_split.py):
wall and CPU seconds of the per-document stages with 2 workers, and the records compared.

    nice -n 5 python bench/bench_input_split.py [--mb 40] [--unit-mb 4] [--workers 2]

Builds OUT/big.parquet (row groups of 2,000 documents, zstd) from ../shared/corpus, about --mb MB
of text, then runs `python -m data_pipeline` on it once per setting in a fresh process tree (CPU:
user + sys of the tree, from RUSAGE_CHILDREN).
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from stack_common.shards import records_sha256  # noqa: E402

CORPUS = REPO.parent / "shared" / "corpus"


def build(path: Path, mb: float) -> int:
    tables, size = [], 0
    for f in sorted(CORPUS.glob("*.parquet")):
        table = pq.read_table(f, columns=["id", "text", "source"])
        tables.append(table)
        size += sum(len(t.encode()) for t in table.column("text").to_pylist())
        if size >= mb * 1e6:
            break
    table = pa.concat_tables(tables)
    pq.write_table(table, path, row_group_size=2000, compression="zstd")
    return table.num_rows


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(src: Path, out: Path, unit_mb: float, workers: int) -> tuple[float, float]:
    cpu0, t0 = children_cpu(), time.time()
    subprocess.run([sys.executable, "-m", "data_pipeline", f"input={src}", f"output={out}", f"workers={workers}",
                    f"reader.unit_mb={unit_mb}", "overwrite=true"], cwd=REPO, check=True,
                   env={**os.environ, "BC_NO_PROGRESS": "1"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.time() - t0, children_cpu() - cpu0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/bench_input_split")
    ap.add_argument("--mb", type=float, default=40)
    ap.add_argument("--unit-mb", type=float, default=4)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    src = out / "big.parquet"
    if not src.is_file():
        print(f"built {src}: {build(src, args.mb):,} documents, {src.stat().st_size / 1e6:.1f} MB on disk")
    rows = []
    for unit_mb in (0, args.unit_mb):
        wall, cpu = run(src, out / f"run-{unit_mb}", unit_mb, args.workers)
        digest = records_sha256(out / f"run-{unit_mb}" / "final")
        files = {e.name.split("-")[0] for e in (out / f"run-{unit_mb}" / "final").glob("u*.arrow")}
        rows.append((unit_mb, len(files), wall, cpu, digest))
    print(f"{'unit_mb':>8} {'units':>6} {'wall s':>8} {'CPU s':>8}  final/ records")
    for unit_mb, units, wall, cpu, digest in rows:
        print(f"{unit_mb:>8} {units:>6} {wall:>8.1f} {cpu:>8.1f}  {digest[:16]}")
    print("same records:", rows[0][4] == rows[1][4], f"(load average {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
