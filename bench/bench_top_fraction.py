"""quality.mode=top_fraction cut-offs: wall time and peak RSS over N scored documents (print figures;
assert nothing). Synthetic kept/ units: ids, zh/en/other, float32 scores with many ties, texts of
about 3 KB (windows of ../shared/corpus, as quality-scored web documents are), zstd shards.

    .venv/bin/python bench/bench_top_fraction.py --docs 300000 --reference-tree /tmp/ref
With --reference-tree DIR (e.g. `git archive d5d4122 | tar -x -C DIR`; repeatable) the same cut-offs
are also computed with DIR's code, and all must be equal.
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

import numpy as np
import pyarrow as pa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))

from dedup_data import load_corpus  # noqa: E402

from data_pipeline.schema import DOC_SCHEMA  # noqa: E402
from stack_common.shards import write_table  # noqa: E402

RUN = """
import json, sys, time
from pathlib import Path
from data_pipeline.top_fraction import cutoffs
dirs = sorted(Path(sys.argv[1]).glob("unit-*"))
t = time.time()
result = cutoffs(dirs, {"zh": 0.5, "en": 0.9})
hwm = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"cutoffs": result, "seconds": time.time() - t, "peak_rss": hwm}))
"""


def build(root: Path, n_docs: int, n_units: int = 8, text_chars: int = 3000) -> None:
    rng = np.random.default_rng(0)
    base = "\n".join(d["text"] for d in load_corpus())
    if len(base) < 2 * text_chars:
        raise SystemExit("no text in ../shared/corpus (bench/dedup_data.CORPUS): the bench needs it")
    per_unit = n_docs // n_units
    for u in range(n_units):
        starts = rng.integers(0, len(base) - text_chars, per_unit)
        lengths = rng.integers(text_chars // 2, text_chars * 3 // 2, per_unit)
        texts = [base[s:s + int(n)] for s, n in zip(starts, lengths)]
        score = rng.random(per_unit).astype(np.float32)
        score[rng.random(per_unit) < 0.3] = np.float32(0.5)                 # a large tie
        langs = np.array(["zh", "en", "code"])[rng.integers(0, 3, per_unit)]
        ids = [f"{u:02d}-{i:09d}" for i in rng.permutation(per_unit)]
        table = pa.table({"id": ids, "text": texts, "lang": langs, "source": ["b"] * per_unit,
                          "quality_score": score, "annotations": ["{}"] * per_unit}, schema=DOC_SCHEMA)
        write_table(root / f"unit-{u}" / "kept", table, prefix="part")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=300_000)
    ap.add_argument("--reference-tree", action="append", default=[], help="another checkout to time (repeatable)")
    ap.add_argument("--out", default=str(REPO / "bench_out" / "top_fraction"))
    args = ap.parse_args()
    root = Path(args.out) / f"units-{args.docs}"
    if not (root / "unit-0" / "kept" / "manifest.json").is_file():
        shutil.rmtree(root, ignore_errors=True)
        build(root, args.docs)
    results = {}
    for name, tree in [("this", REPO)] + [(tree, Path(tree)) for tree in args.reference_tree]:
        t = time.time()
        proc = subprocess.run([sys.executable, "-c", RUN, str(root)], cwd=tree, capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(tree)}, check=True)
        results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{args.docs} docs, {name}: cut-offs {results[name]['seconds']:.1f}s "
              f"(process {time.time() - t:.1f}s), peak RSS {results[name]['peak_rss'] / 2**20:.0f} MiB", flush=True)
    if len(results) > 1:
        print("same cut-offs:", all(r["cutoffs"] == results["this"]["cutoffs"] for r in results.values()))


if __name__ == "__main__":
    main()
