"""Exact and MinHash dedup of this checkout against a reference checkout: same kept/excluded files.

    git archive d5d4122 | tar -x -C /tmp/ref       # the implementation before partitioning
    PYTHONPATH=. python bench/dedup_same_output.py --reference /tmp/ref --docs 6000

Corpora: real text from ../shared/corpus (windows of documents, a third perturbed copies and a tenth
verbatim copies, in several shards) and the repository's data/sample with near copies. Each stage
runs in the reference with its defaults, here with the default budget and with a budget small
enough to force many partitions (MinHash: also of its components, printed as partitions x rounds),
with 1 and 2 workers; the kept/excluded records (rows, and
`records_sha256`: the same records in the same order, whatever the files' codec or splits, so a
reference that wrote other shard compression compares too) and the stats counts must be equal.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from dedup_data import load_corpus, perturbed_copy  # noqa: E402

from data_pipeline.schema import DOC_SCHEMA  # noqa: E402
from stack_common.shards import read_manifest, records_sha256, write_table  # noqa: E402

RUN = ("import json, sys; from pathlib import Path; from data_pipeline.dedup import GLOBAL_STAGES; "
       "GLOBAL_STAGES[sys.argv[1]](Path(sys.argv[2]), Path(sys.argv[3]), json.loads(sys.argv[4]), int(sys.argv[5]), "
       "'local', None)")
COUNTS = ("docs_in", "docs_out", "excluded", "clusters", "candidate_pairs", "verified_pairs")


def real_sample(out: Path, n_docs: int, seed: int = 3) -> Path:
    rng = random.Random(seed)
    base = [d for d in load_corpus() if len(d["text"]) >= 300]
    rows = []
    for i in range(n_docs):
        if rows and rng.random() < 0.1:
            text = rng.choice(rows)["text"]                          # a verbatim copy
        else:
            d = base[rng.randrange(len(base))]
            start = rng.randrange(max(1, len(d["text"]) - 800))
            text = d["text"][start:start + 800]
            if rng.random() < 0.35:
                text = perturbed_copy(text, "en" if d["lang"] == "en" else "zh", rng)[0]
        quality = None if rng.random() < 0.1 else round(rng.random(), 2)
        rows.append({"id": f"r{i:06d}", "text": text, "lang": "en", "source": "corpus", "quality_score": quality,
                     "annotations": "{}"})
    write_table(out, pa.Table.from_pylist(rows, schema=DOC_SCHEMA), target_bytes=400_000)
    return out


def sample_with_copies(out: Path, seed: int = 7) -> Path:
    rng = random.Random(seed)
    rows = []
    for lang in ("en", "zh"):
        for r in pq.read_table(REPO / "data/sample" / f"{lang}.parquet").to_pylist()[:150]:
            rows.append({"id": r["id"], "text": r["text"], "lang": lang, "source": "sample",
                         "quality_score": round(rng.random(), 2), "annotations": "{}"})
            for k in range(rng.randrange(3)):
                text = perturbed_copy(r["text"], lang, rng)[0] if k else r["text"].upper()
                rows.append({**rows[-1], "id": f"{r['id']}-c{k}", "text": text, "quality_score": rng.random()})
    rng.shuffle(rows)
    write_table(out, pa.Table.from_pylist(rows, schema=DOC_SCHEMA), target_bytes=60_000)
    return out


def run(code: Path, stage: str, src: Path, out: Path, cfg: dict, workers: int) -> tuple:
    env = dict(os.environ, PYTHONPATH=str(code), BC_NO_PROGRESS="1", OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "-c", RUN, stage, str(src), str(out), json.dumps(cfg), str(workers)],
                   cwd=code, env=env, check=True)
    files = {sub: (read_manifest(out / sub)["rows"], records_sha256(out / sub)) for sub in ("kept", "excluded")}
    stats = json.loads((out / "stats.json").read_text())
    return files, {k: stats.get(k) for k in COUNTS}, stats


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reference", type=Path, required=True, help="a checkout of the reference commit")
    ap.add_argument("--docs", type=int, default=6000)
    ap.add_argument("--minhash-tiny-mb", type=float, default=0.05, help="MinHash's small memory_budget_mb")
    ap.add_argument("--stages", default="exact_dedup,minhash_dedup")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="dedup-same-"))
    corpora = {"real": real_sample(tmp / "real", args.docs), "sample": sample_with_copies(tmp / "sample")}
    tiny = {"exact_dedup": {"memory_budget_mb": 0.02}, "minhash_dedup": {"memory_budget_mb": args.minhash_tiny_mb}}
    failures = 0
    for name, src in corpora.items():
        for stage in args.stages.split(","):
            ref_files, ref_counts, _ = run(args.reference, stage, src, tmp / f"ref-{name}-{stage}", {}, 1)
            for label, cfg in (("default", {}), ("tiny budget", tiny[stage])):
                for workers in (1, 2):
                    out = tmp / f"new-{name}-{stage}-{label.replace(' ', '')}-{workers}"
                    files, counts, stats = run(REPO, stage, src, out, cfg, workers)
                    same = files == ref_files and counts == ref_counts
                    failures += not same
                    components = (f" components={stats['component_partitions']}x{stats['component_rounds']}"
                                  if "component_rounds" in stats else "")
                    print(f"{name:6s} {stage:13s} {label:11s} workers={workers} partitions={stats['partitions']:4d}"
                          f"{components} {'SAME' if same else 'DIFFERENT'} {counts}", flush=True)
    print("all identical" if not failures else f"{failures} runs differ")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
