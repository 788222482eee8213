"""Document shards per `shards.compression` setting: bytes on disk and CPU seconds to write and to read
them back (print figures; assert nothing). The documents are written as the pipeline writes a unit's
kept/ (ArrowWriter, batches of reader.batch_docs rows) and read back whole, as the next stage does.

    nice -n 10 python bench/bench_shard_compression.py                         # ../shared/corpus (real text)
    nice -n 10 python bench/bench_shard_compression.py /work/scale/corpus-20000/docs/part-00000.parquet
Inputs: Parquet files (a `text` column; other DOC_SCHEMA columns are filled in) or shard directories.
CPU is process time, best of --repeat, so other jobs on the machine inflate it little.
"""
from __future__ import annotations

import argparse
import glob
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from data_pipeline.schema import DOC_SCHEMA  # noqa: E402
from stack_common.shards import ArrowWriter, ShardCompression, iter_batches, read_table  # noqa: E402

SETTINGS = {"none": ShardCompression("none"), "lz4": ShardCompression("lz4"),
            "zstd 1": ShardCompression(zstd_level=1), "zstd 3 (default)": ShardCompression(),
            "zstd 6": ShardCompression(zstd_level=6), "zstd 9": ShardCompression(zstd_level=9)}


def load(inputs: list[str]) -> pa.Table:
    tables = []
    for pattern in inputs:
        for path in sorted(glob.glob(pattern)) or [pattern]:
            if Path(path, "manifest.json").is_file():
                tables.append(read_table(path).select(DOC_SCHEMA.names))
                continue
            t = pq.read_table(path)
            n = t.num_rows
            col = lambda name, default: t[name] if name in t.schema.names else pa.array([default] * n)  # noqa: E731
            tables.append(pa.table({"id": col("id", "").cast(pa.string()), "text": t["text"],
                                    "lang": col("lang", "en"), "source": col("source", Path(path).stem),
                                    "quality_score": pa.array([0.5] * n, pa.float32()),
                                    "annotations": pa.array(["{}"] * n)}).cast(DOC_SCHEMA))
    return pa.concat_tables(tables).combine_chunks()


def measure(table: pa.Table, setting: ShardCompression, out: Path, batch_rows: int, repeat: int) -> tuple:
    best_write = best_read = float("inf")
    for _ in range(repeat):
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.process_time()
        with ArrowWriter(out, DOC_SCHEMA, prefix="part", batch_rows=batch_rows, compression=setting.codec()) as w:
            for batch in table.to_batches(max_chunksize=batch_rows):
                w.write(batch)
        best_write = min(best_write, time.process_time() - t0)
        t0 = time.process_time()
        rows = sum(b.num_rows for b in iter_batches(out))
        best_read = min(best_read, time.process_time() - t0)
        assert rows == table.num_rows
    size = sum(p.stat().st_size for p in out.glob("*.arrow"))
    return size, best_write, best_read


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="*", default=[str(REPO.parent / "shared" / "corpus" / "*.parquet")])
    ap.add_argument("--batch-rows", type=int, default=2000, help="reader.batch_docs")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    table = load(args.inputs)
    text = int(pc.sum(pc.binary_length(table["text"])).as_py())
    print(f"{table.num_rows} documents, {text / 1e6:.1f} MB of text ({text / table.num_rows:.0f} B a document), "
          f"Arrow in memory {table.nbytes / 1e6:.1f} MB")
    print(f"{'shards':18s} {'MB on disk':>10s} {'/ none':>7s} {'B/doc':>7s} {'write s/GB':>10s} {'read s/GB':>9s}")
    tmp = Path(tempfile.mkdtemp(prefix="shard-codecs-"))
    try:
        base = None
        for name, setting in SETTINGS.items():
            size, write_s, read_s = measure(table, setting, tmp / "out", args.batch_rows, args.repeat)
            base = base or size
            print(f"{name:18s} {size / 1e6:10.1f} {size / base:7.3f} {size / table.num_rows:7.0f} "
                  f"{write_s / text * 1e9:10.2f} {read_s / text * 1e9:9.2f}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("(s/GB: CPU seconds per GB of text; compare with a stage's CPU per GB of text, data_pipeline/README.md)")


if __name__ == "__main__":
    main()
