"""Document, paragraph, sentence and semantic dedup plus cluster balancing on real text.

    python bench/bench_semantic.py [--corpus ../shared/corpus] [--per-source 3000] [--out /tmp/bench_semantic]

Builds a DOC_SCHEMA shard directory from `../shared/corpus` (up to --per-source documents of
each source, quality_score = the document's length rank so survivors are deterministic), then
runs the global stages one after the other, each in its own process:

    exact_dedup -> minhash_dedup -> line_dedup@paragraph -> line_dedup@sentence -> semantic_dedup
    -> cluster_balance

and prints per stage: documents in / removed, docs/s (wall, one worker) and peak RSS of the process;
then what semantic_dedup removed per source (all of it beyond exact and MinHash, which ran
before), the MinHash Jaccard of each removed pair, and a few examples.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from data_pipeline.schema import DOC_SCHEMA  # noqa: E402
from stack_common.shards import read_table, write_table  # noqa: E402

STAGES = ["exact_dedup", "minhash_dedup", "line_dedup@paragraph", "line_dedup@sentence", "semantic_dedup",
          "cluster_balance"]


def build_input(corpus: Path, per_source: int, out: Path) -> int:
    rows = []
    for path in sorted(corpus.glob("*.parquet")):
        table = pq.read_table(path, columns=["id", "source", "lang", "text"]).slice(0, per_source)
        for r in table.to_pylist():
            rows.append({"id": f"{path.stem}/{r['id']}", "text": r["text"], "lang": r["lang"] or "",
                         "source": path.stem, "quality_score": None, "annotations": "{}"})
    write_table(out, pa.Table.from_pylist(rows, schema=DOC_SCHEMA), target_bytes=8 << 20)
    return len(rows)


def run_one(stage: str, src: str, dst: str) -> None:
    """Child process: one stage with the project's default settings."""
    from data_pipeline.__main__ import load_config
    from data_pipeline.dedup import GLOBAL_STAGES
    from data_pipeline.dedup.instances import split_stage, stage_settings

    cfg = load_config([])
    GLOBAL_STAGES[split_stage(stage)[0]](Path(src), Path(dst), stage_settings(stage, cfg.dedup), 1, "local", None,
                                         stage=stage)


def timed_child(stage: str, src: Path, dst: Path) -> tuple[float, float]:
    start = time.time()
    proc = subprocess.Popen([sys.executable, __file__, "--one", stage, str(src), str(dst)],
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    _, status, usage = os.wait4(proc.pid, 0)
    if status:
        sys.exit(f"{stage} failed ({status})")
    return time.time() - start, usage.ru_maxrss / 1024


def semantic_report(stage_dir: Path) -> None:
    from data_pipeline.dedup.minhash import MinHashConfig, jaccard_sorted, shingle_set

    excluded = read_table(stage_dir / "excluded").to_pylist()
    kept = {r["id"]: r["text"] for r in read_table(stage_dir / "kept").to_pylist()}
    print(f"\nsemantic_dedup removed {len(excluded)} documents (after exact and MinHash dedup):")
    by_source = Counter(r["source"] for r in excluded)
    print("| source | removed |\n|---|---|")
    for source, n in by_source.most_common():
        print(f"| {source} | {n} |")
    conf = MinHashConfig()
    jaccards = []
    for r in excluded:
        notes = json.loads(r["annotations"])
        jaccards.append((jaccard_sorted(shingle_set(r["text"], conf), shingle_set(kept[notes["duplicate_of"]], conf)),
                         notes["similarity"], r, notes["duplicate_of"]))
    bins = Counter(min(int(j * 10), 9) / 10 for j, *_ in jaccards)
    print("\nMinHash (character 5-gram) Jaccard of each removed document with the one it duplicates:")
    print("| Jaccard | removed |\n|---|---|")
    for b in sorted(bins):
        print(f"| {b:.1f}-{b + 0.1:.1f} | {bins[b]} |")
    print("\nexamples (cosine, Jaccard, removed -> kept):")
    step = max(1, len(jaccards) // 8)
    for j, sim, r, dup in sorted(jaccards, key=lambda x: x[0])[::step][:8]:
        a = r["text"][:90].replace("\n", " ")
        b = kept[dup][:90].replace("\n", " ")
        print(f"- cos {sim:.3f}, J {j:.2f}: {r['id']}\n    removed: {a}\n    kept:    {b}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--one":
        run_one(*sys.argv[2:5])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default=str(REPO.parent / "shared" / "corpus"))
    parser.add_argument("--per-source", type=int, default=3000)
    parser.add_argument("--out", default="/tmp/bench_semantic")
    parser.add_argument("--start-at", choices=STAGES, help="reuse the outputs of the stages before this one "
                        "from a previous run into --out (their rows show no timing)")
    args = parser.parse_args()
    out = Path(args.out)
    first = STAGES.index(args.start_at) if args.start_at else 0
    if not first:
        if out.exists():
            import shutil
            shutil.rmtree(out)
        n = build_input(Path(args.corpus), args.per_source, out / "input")
        print(f"input: {n} documents, up to {args.per_source} per source of {args.corpus}")
    rows, src = [], out / "input"
    for i, stage in enumerate(STAGES):
        dst = out / f"{i:02d}_{stage}"
        if i < first:
            seconds, rss = float("nan"), float("nan")
        else:
            if dst.exists():
                import shutil
                shutil.rmtree(dst)
            seconds, rss = timed_child(stage, src, dst)
        stats = json.loads((dst / "stats.json").read_text())
        removed = sum(stats["excluded"].values())
        rows.append((stage, stats["docs_in"], removed, stats["docs_in"] / seconds, rss, stats))
        src = dst / "kept"
    print("\n| stage | docs in | removed | docs/s | peak RSS MiB | notes |\n|---|---|---|---|---|---|")
    for stage, docs_in, removed, rate, rss, stats in rows:
        notes = {k: stats[k] for k in ("unit", "removed_units", "docs_modified", "clusters", "cap", "clusters_over_cap",
                                       "explained_variance", "docs_without_embedding", "largest_cluster") if k in stats}
        notes = json.dumps(notes, ensure_ascii=False)
        print(f"| {stage} | {docs_in} | {removed} | {rate:,.0f} | {rss:,.0f} | {notes} |")
    semantic_report(out / f"{STAGES.index('semantic_dedup'):02d}_semantic_dedup")
    balance = out / f"{STAGES.index('cluster_balance'):02d}_cluster_balance"
    print(f"\ncluster table: {balance / 'clusters.tsv'}, plot: {balance / 'clusters.png'}; largest clusters:")
    print("\n".join((balance / "clusters.tsv").read_text(encoding="utf-8").splitlines()[:9]))


if __name__ == "__main__":
    main()
