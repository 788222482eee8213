"""Dedup benchmarks on ../shared/corpus (prints figures; asserts nothing about speed).

Quality (labelled near duplicates; ours vs datatrove's 4-stage MinHash on the same cores):
    .venv/bin/python bench/bench_dedup.py quality --convert-python /work/venvs/datatrove/bin/python \
        --datatrove-python /work/venvs/datatrove/bin/python --workers 2
Scale (time and peak RSS of exact + MinHash + line dedup, 100k -> 1M documents):
    .venv/bin/python bench/bench_dedup.py scale --sizes 100000 1000000 --workers 2

The converter and datatrove live in their own venv (e.g. `python3 -m venv /work/venvs/datatrove &&
/work/venvs/datatrove/bin/pip install datatrove spacy jieba nltk orjson tokenizers "xxhash<4" zhconv`;
xxhash 4 breaks datatrove 0.10.1, which hashes str), never in the project's.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dedup_data import build_benchmark, build_scale, exact_jaccard  # noqa: E402

from data_pipeline.dedup import GLOBAL_STAGES  # noqa: E402
from stack_common.shards import iter_batches, read_table  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


# ---- metrics ---------------------------------------------------------------------------------------

def our_members(out_dir: Path) -> list[list]:
    """[id, cluster, removed] for every document our stage put in a cluster."""
    members = []
    for sub, removed in (("kept", False), ("excluded", True)):
        for batch in iter_batches(out_dir / sub, columns=["id", "annotations"]):
            for doc_id, raw in zip(batch.column("id").to_pylist(), batch.column("annotations").to_pylist()):
                notes = json.loads(raw)
                cluster = notes["cluster_id"] if removed else notes.get("minhash_dedup_cluster", {}).get("cluster_id")
                if cluster is not None:
                    members.append([doc_id, cluster, removed])
    return members


def evaluate(members: list[list], labels: list[dict], texts: dict, langs: dict, threshold: float) -> dict:
    """Precision and recall of removed documents, per language, at Jaccard >= threshold.

    recall: labelled pairs with exact Jaccard >= threshold whose two documents share a cluster.
    precision: removed documents with exact Jaccard >= threshold to some other member of their
    cluster (a real duplicate, labelled or not).
    """
    cluster_of = {m[0]: m[1] for m in members}
    clusters: dict = {}
    for doc_id, cluster, removed in members:
        clusters.setdefault(cluster, []).append((doc_id, removed))
    labelled = {}
    for lab in labels:
        labelled.setdefault(lab["a"], []).append((lab["b"], lab["jaccard"]))
        labelled.setdefault(lab["b"], []).append((lab["a"], lab["jaccard"]))
    out = {}
    for lang in ("en", "zh"):
        pos = [lab for lab in labels if lab["lang"] == lang and lab["jaccard"] >= threshold]
        found = sum(1 for lab in pos if lab["a"] in cluster_of and cluster_of.get(lab["a"]) == cluster_of.get(lab["b"]))
        removed = [m for m in members if m[2] and langs[m[0]] == lang]
        good = sum(1 for doc_id, cluster, _ in removed if _justified(doc_id, clusters[cluster], labelled, texts, threshold))
        out[lang] = {"positives": len(pos), "recall": found / max(1, len(pos)), "removed": len(removed),
                     "precision": good / max(1, len(removed))}
    return out


def _justified(doc_id, members, labelled, texts, threshold, max_checks=30) -> bool:
    mates = {m for m, _ in members if m != doc_id}
    if any(other in mates and j >= threshold for other, j in labelled.get(doc_id, [])):
        return True
    return any(exact_jaccard(texts[doc_id], texts[m]) >= threshold for m in sorted(mates)[:max_checks])


# ---- quality run -------------------------------------------------------------------------------------

def quality(args) -> None:
    root = Path(args.out)
    bench = root / "benchmark"
    if not (bench / "labels.parquet").is_file():
        t = time.time()
        summary = build_benchmark(bench, args.convert_python)
        print(f"built benchmark: {summary} in {time.time() - t:.0f}s")
    labels = pq.read_table(bench / "labels.parquet").to_pylist()
    docs = read_table(bench / "docs", columns=["id", "text", "lang"]).to_pydict()
    texts = dict(zip(docs["id"], docs["text"]))
    langs = dict(zip(docs["id"], docs["lang"]))
    mb = sum(len(t.encode()) for t in docs["text"]) / 1e6
    print(f"benchmark: {len(texts)} documents ({mb:.0f} MB), {len(labels)} labelled pairs "
          f"(en {sum(lab['lang'] == 'en' for lab in labels)}, zh {sum(lab['lang'] == 'zh' for lab in labels)}, "
          f"zh-tw {sum(lab['kind'] == 'zh-tw' for lab in labels)})")
    results = {}
    for threshold in (0.8, 0.7):
        out = root / f"ours-{threshold}"
        shutil.rmtree(out, ignore_errors=True)
        cmd = [sys.executable, "-c", RUN_MINHASH, str(bench / "docs"), str(out), str(threshold), str(args.workers)]
        seconds, cpu, stdout = _measured(cmd)
        stats = json.loads(stdout.strip().splitlines()[-1])
        results[f"ours@{threshold}"] = (seconds, cpu, {threshold: evaluate(our_members(out), labels, texts, langs,
                                                                            threshold)})
        print(f"ours threshold={threshold}: {seconds:.1f}s wall, {cpu:.1f}s CPU, bands={stats['bands']}x{stats['rows']} "
              f"candidates={stats['candidate_pairs']} verified={stats['verified_pairs']} "
              f"removed={stats['excluded'].get('near_duplicate', 0)} steps={stats['step_seconds']}")
    _compare_lsh_index(root / "ours-0.8", results)
    if args.datatrove_python:
        jsonl = root / "datatrove-in"
        if not jsonl.is_dir():
            _export_jsonl(docs, jsonl, args.workers)
        buckets, rows = 14, 8                       # datatrove's defaults
        work = root / f"datatrove-work-{buckets}x{rows}"
        shutil.rmtree(work, ignore_errors=True)
        seconds, cpu, stdout = _measured([args.datatrove_python, str(REPO / "bench" / "dedup_datatrove.py"),
                                          str(jsonl), str(work), "--workers", str(args.workers),
                                          "--buckets", str(buckets), "--rows", str(rows)])
        dt = json.loads(stdout.strip().splitlines()[-1])
        evals = {th: evaluate(dt["members"], labels, texts, langs, th) for th in (0.8, 0.7)}
        results[f"datatrove {buckets}x{rows}"] = (seconds, cpu, evals)
        print(f"datatrove {buckets}x{rows}: {seconds:.1f}s wall, {cpu:.1f}s CPU, stages={dt['seconds']}")
    print("\nsystem               wall s   CPU s   J>=  lang  precision  recall  (removed / labelled positives)")
    for name, (seconds, cpu, evals) in results.items():
        for threshold, per_lang in evals.items():
            for lang, m in per_lang.items():
                print(f"{name:20s} {seconds:7.1f} {cpu:7.1f}  {threshold:.1f}  {lang:4s}  {m['precision']:9.3f}  "
                      f"{m['recall']:6.3f}  ({m['removed']} / {m['positives']})")
    if args.datatrove_python:
        ours = results["ours@0.8"]
        for name in [k for k in results if k.startswith("datatrove")]:
            print(f"ours@0.8 vs {name}: {results[name][0] / ours[0]:.1f}x faster (wall), "
                  f"{results[name][1] / ours[1]:.1f}x less CPU time")


def _compare_lsh_index(out: Path, results: dict) -> None:
    """Our on-disk band sort against datasketch's in-memory MinHashLSH on the same signatures."""
    import numpy as np
    from datasketch import LeanMinHash, MinHash, MinHashLSH

    stats = json.loads((out / "stats.json").read_text())
    sigs = np.concatenate([np.stack(read_arrow_file(p).column("signature").to_numpy(zero_copy_only=False))
                           for p in sorted((out / "work" / "signatures").glob("*.arrow"))])
    rss0 = psutil.Process().memory_info().rss
    t = time.time()
    lsh = MinHashLSH(num_perm=sigs.shape[1], params=(stats["bands"], stats["rows"]))
    with lsh.insertion_session() as session:
        for i, s in enumerate(sigs):
            session.insert(i, LeanMinHash(MinHash(hashvalues=s, scheme="affine32")), check_duplication=False)
    pairs = sum(len(lsh.query(LeanMinHash(MinHash(hashvalues=s, scheme="affine32")))) - 1 for s in sigs)
    seconds = time.time() - t
    rss = (psutil.Process().memory_info().rss - rss0) / 2**20
    print(f"LSH candidates for {len(sigs)} docs: our disk band sort {stats['step_seconds']['bands']:.1f}s "
          f"(all bands, workers); datasketch MinHashLSH in memory {seconds:.1f}s insert+query, "
          f"+{rss:.0f} MiB RSS, {pairs // 2} pairs")


def read_arrow_file(path: Path):
    import pyarrow as pa
    with pa.memory_map(str(path)) as src:
        return pa.ipc.open_file(src).read_all()


RUN_MINHASH = """
import json, sys
from pathlib import Path
from data_pipeline.dedup import GLOBAL_STAGES
src, out, threshold, workers = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
print(json.dumps(GLOBAL_STAGES["minhash_dedup"](src, out, {"threshold": threshold}, workers, "local", None)))
"""


def _measured(cmd: list[str]) -> tuple[float, float, str]:
    """Wall seconds, CPU seconds of the process tree, and stdout of a command.

    CPU time is the fairer figure on a shared machine: it does not grow with other users' load.
    Taken from rusage and from per-process samples (pool workers that are never reaped escape rusage)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.time()
    child = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "BC_NO_PROGRESS": "1"})
    cpu_by_pid, done = {}, threading.Event()

    def sample():
        root = psutil.Process(child.pid)
        while not done.is_set():
            try:
                for p in [root, *root.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):
                        c = p.cpu_times()
                        cpu_by_pid[p.pid] = c.user + c.system
            except psutil.Error:
                pass
            time.sleep(0.1)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = child.communicate()
    done.set()
    sampler.join()
    seconds = time.time() - t
    if child.returncode != 0:
        print(stderr[-3000:])
        raise SystemExit(f"failed: {' '.join(cmd[:2])}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    reaped = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    # rusage counts every process that was waited for; sampling also sees workers that never are.
    return seconds, max(reaped, sum(cpu_by_pid.values())), stdout


def _export_jsonl(docs: dict, out: Path, files_per_lang: int) -> None:
    out.mkdir(parents=True)
    handles = {(lang, k): open(out / f"{lang}-{k:03d}.jsonl", "w", encoding="utf-8")
               for lang in ("en", "zh") for k in range(files_per_lang)}
    for i, (doc_id, text, lang) in enumerate(zip(docs["id"], docs["text"], docs["lang"])):
        handles[(lang, i % files_per_lang)].write(json.dumps({"id": doc_id, "text": text}, ensure_ascii=False) + "\n")
    for h in handles.values():
        h.close()


# ---- scale run ------------------------------------------------------------------------------------------

RUN_STAGES = """
import json, sys
from pathlib import Path
from data_pipeline.dedup import GLOBAL_STAGES
src, out, workers = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
for stage in ("exact_dedup", "minhash_dedup", "line_dedup"):
    stats = GLOBAL_STAGES[stage](src, out / stage, {}, workers, "local", None)
    print(json.dumps(stats), flush=True)
    src = out / stage / "kept"
"""


def _tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def scale(args) -> None:
    root = Path(args.out)
    rows = []
    for n in args.sizes:
        data = root / f"scale-{n}"
        if not (data / "manifest.json").is_file():
            shutil.rmtree(data, ignore_errors=True)
            t = time.time()
            build_scale(data, n)
            print(f"built {n} documents in {time.time() - t:.0f}s")
        out = root / f"scale-{n}-out"
        shutil.rmtree(out, ignore_errors=True)
        t = time.time()
        child = subprocess.Popen([sys.executable, "-c", RUN_STAGES, str(data), str(out), str(args.workers)],
                                 cwd=REPO, stdout=subprocess.PIPE, text=True, env={**os.environ, "BC_NO_PROGRESS": "1"})
        peak, done = [0], threading.Event()

        def sample():
            proc = psutil.Process(child.pid)
            while not done.is_set():
                peak[0] = max(peak[0], _tree_rss(proc))
                time.sleep(0.2)
        threading.Thread(target=sample, daemon=True).start()
        stdout, _ = child.communicate()
        done.set()
        seconds = time.time() - t
        if child.returncode != 0:
            raise SystemExit(f"scale run failed for {n}")
        stats = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
        mb = stats[0]["bytes_in"] / 1e6
        rows.append((n, mb, seconds, peak[0] / 2**30, stats))
        per_stage = {s["stage"]: round(s["seconds"], 1) for s in stats}
        print(f"{n} docs ({mb:.0f} MB): {seconds:.0f}s, peak RSS {peak[0] / 2**30:.2f} GiB (all processes), "
              f"stages {per_stage}, minhash removed {stats[1]['excluded']}, pairs {stats[1]['candidate_pairs']}"
              f"/{stats[1]['verified_pairs']}")
    print("\n   docs     MB   wall s  docs/s  peak RSS GiB")
    for n, mb, seconds, rss, _ in rows:
        print(f"{n:7d} {mb:6.0f} {seconds:8.0f} {n / seconds:7.0f} {rss:8.2f}")
    if len(rows) > 1:
        (n0, _, s0, r0, _), (n1, _, s1, r1, _) = rows[0], rows[-1]
        print(f"growth {n0} -> {n1} docs (x{n1 / n0:.0f}): time x{s1 / s0:.1f}, peak RSS x{r1 / r0:.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("quality")
    q.add_argument("--convert-python", required=True, help="interpreter with zhconv or opencc installed")
    q.add_argument("--datatrove-python", default="", help="interpreter with datatrove installed")
    s = sub.add_parser("scale")
    s.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    for p in (q, s):
        p.add_argument("--workers", type=int, default=2)
        p.add_argument("--out", default=str(REPO / "bench_out" / "dedup"))
    args = ap.parse_args()
    quality(args) if args.cmd == "quality" else scale(args)


if __name__ == "__main__":
    main()
