"""Dedup benchmarks on ../shared/corpus (print figures; assert nothing).

Quality: near-duplicate families with ground truth independent of the stage (bench/dedup_data.py:
character 5-gram Jaccard >= 0.8 on the whole text, written without data_pipeline code); precision,
recall and F1 per language (zh, mixed zh + Latin, en) on the tuning and the held-out half, for the
stage's old token shingles, its new character shingles, and datatrove's 4-stage MinHash:
    .venv/bin/python bench/bench_dedup.py quality --convert-python /work/venvs/datatrove/bin/python \
        --datatrove-python /work/venvs/datatrove/bin/python --workers 2
Tune: exact shingle Jaccard of candidate shingle schemes on the family pairs (no LSH), per threshold:
    .venv/bin/python bench/bench_dedup.py tune --convert-python /work/venvs/datatrove/bin/python --split tune
Scale (time, docs/s and peak RSS of exact + MinHash + line dedup; old and new MinHash shingles):
    .venv/bin/python bench/bench_dedup.py scale --sizes 100000 --workers 2

The converter and datatrove live in their own venv (`python3 -m venv /work/venvs/datatrove &&
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

from dedup_data import (LANGS, TRUTH_THRESHOLD, build_benchmark, build_scale, char_ngrams,  # noqa: E402
                        jaccard)

from stack_common.shards import iter_batches, read_table  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# The stage's settings before and after issue 13 (the old defaults spelled out, so they stay comparable).
OURS = {"ours old (tokens)": {"shingle": "tokens", "bands": 16, "rows": 8}, "ours new (chars)": {}}
SPLITS = ("tune", "held")


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


def our_pairs(out_dir: Path) -> list[tuple[str, str]]:
    """Every pair the stage verified (Jaccard of its shingles >= its threshold), as document ids."""
    import numpy as np
    import pyarrow as pa

    def arrow(path: Path) -> pa.Table:
        with pa.memory_map(str(path)) as src:
            return pa.ipc.open_file(src).read_all()
    work = out_dir / "work"
    names = sorted(p.name for p in (work / "signatures").glob("*.arrow"))
    ids = [i for n in names for i in arrow(work / "signatures" / n).column("id").to_pylist()]
    by_rank = np.load(work / "order" / "doc.npy")
    pairs = []
    for path in sorted((work / "verified").glob("part-*.arrow")):
        t = arrow(path)
        a, b = by_rank[t.column("a").to_numpy()], by_rank[t.column("b").to_numpy()]
        pairs += [(ids[x], ids[y]) for x, y in zip(a, b)]
    return pairs


class Truth:
    """Ground-truth Jaccard of any two benchmark documents (character 5-gram sets, cached)."""

    def __init__(self, texts: dict):
        self.texts, self._grams = texts, {}

    def grams(self, doc_id: str) -> set:
        if doc_id not in self._grams:
            self._grams[doc_id] = char_ngrams(self.texts[doc_id])
        return self._grams[doc_id]

    def duplicate(self, a: str, b: str) -> bool:
        return jaccard(self.grams(a), self.grams(b)) >= TRUTH_THRESHOLD


def evaluate(members: list[list], labels: list[dict], info: dict, truth: Truth, max_checks: int = 50) -> dict:
    """Per (split, language): positive family pairs and their families, precision, recall, F1.

    recall: family pairs with ground-truth Jaccard >= 0.8 whose two documents share a cluster.
    precision: removed documents with ground-truth Jaccard >= 0.8 to at least one other member of
    their cluster (any document, in a family or background); language and split are the removed
    document's.
    """
    cluster_of = {m[0]: m[1] for m in members}
    clusters: dict = {}
    for doc_id, cluster, _ in members:
        clusters.setdefault(cluster, []).append(doc_id)
    out = {}
    for split in SPLITS:
        for lang in LANGS:
            pos = [lab for lab in labels if lab["split"] == split and lab["lang"] == lang
                   and lab["jaccard"] >= TRUTH_THRESHOLD]
            found = sum(1 for lab in pos if lab["a"] in cluster_of and cluster_of[lab["a"]] == cluster_of.get(lab["b"]))
            removed = [m for m in members if m[2] and info[m[0]]["split"] == split and info[m[0]]["lang"] == lang]
            good = sum(1 for doc_id, cluster, _ in removed
                       if any(truth.duplicate(doc_id, other)
                              for other in [o for o in clusters[cluster] if o != doc_id][:max_checks]))
            precision, recall = good / max(1, len(removed)), found / max(1, len(pos))
            out[(split, lang)] = {"pairs": len(pos), "families": len({lab["family"] for lab in pos}),
                                  "removed": len(removed), "precision": precision, "recall": recall,
                                  "f1": 2 * precision * recall / max(1e-9, precision + recall)}
    return out


# ---- quality run -------------------------------------------------------------------------------------

def load_benchmark(root: Path, convert_python: str) -> tuple[Path, list[dict], dict, dict]:
    bench = root / "benchmark"
    if not (bench / "members.parquet").is_file():          # written last: the benchmark is complete
        shutil.rmtree(bench, ignore_errors=True)
        t = time.time()
        print(f"built benchmark: {build_benchmark(bench, convert_python)} in {time.time() - t:.0f}s")
    labels = pq.read_table(bench / "labels.parquet").to_pylist()
    info = {m["id"]: m for m in pq.read_table(bench / "members.parquet").to_pylist()}
    docs = read_table(bench / "docs", columns=["id", "text", "lang"]).to_pydict()
    return bench, labels, info, docs


def quality(args) -> None:
    root = Path(args.out)
    bench, labels, info, docs = load_benchmark(root, args.convert_python)
    texts = dict(zip(docs["id"], docs["text"]))
    truth = Truth(texts)
    mb = sum(len(t.encode()) for t in docs["text"]) / 1e6
    print(f"benchmark: {len(texts)} documents ({mb:.0f} MB), {len({m['family'] for m in info.values()})} families, "
          f"{len(labels)} family pairs, {sum(lab['jaccard'] >= TRUTH_THRESHOLD for lab in labels)} of them "
          f"near duplicates (ground truth: character 5-gram Jaccard >= {TRUTH_THRESHOLD})")
    results = {}
    for name, cfg in OURS.items():
        out = root / ("ours-" + name.split()[1])
        shutil.rmtree(out, ignore_errors=True)
        cmd = [sys.executable, "-c", RUN_MINHASH, str(bench / "docs"), str(out), json.dumps(cfg), str(args.workers)]
        seconds, cpu, stdout = _measured(cmd)
        stats = json.loads(stdout.strip().splitlines()[-1])
        results[name] = (seconds, cpu, evaluate(our_members(out), labels, info, truth))
        pairs = our_pairs(out)
        print(f"{name}: {sum(truth.duplicate(a, b) for a, b in pairs)} of the {len(pairs)} pairs it verified are "
              f"near duplicates by the ground truth")
        print(f"{name}: {seconds:.1f}s wall, {cpu:.1f}s CPU, shingle={stats['shingle']} bands={stats['bands']}x"
              f"{stats['rows']} candidates={stats['candidate_pairs']} verified={stats['verified_pairs']} "
              f"removed={stats['excluded'].get('near_duplicate', 0)} steps={stats['step_seconds']}")
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
        results[f"datatrove {buckets}x{rows}"] = (seconds, cpu, evaluate(dt["members"], labels, info, truth))
        print(f"datatrove {buckets}x{rows}: {seconds:.1f}s wall, {cpu:.1f}s CPU, stages={dt['seconds']}")
    _print_table(results, len(texts))


def _print_table(results: dict, n_docs: int) -> None:
    print(f"\n{'system':20s} {'split':5s} {'lang':6s} {'pairs/families':>15s} {'removed':>7s} "
          f"{'precision':>9s} {'recall':>6s} {'F1':>6s} {'docs/s':>7s} {'docs/CPU s':>10s}")
    for name, (seconds, cpu, evals) in results.items():
        for (split, lang), m in evals.items():
            print(f"{name:20s} {split:5s} {lang:6s} {m['pairs']:>8d}/{m['families']:<6d} {m['removed']:7d} "
                  f"{m['precision']:9.3f} {m['recall']:6.3f} {m['f1']:6.3f} {n_docs / seconds:7.0f} "
                  f"{n_docs / cpu:10.0f}")
    print("pairs/families: near-duplicate family pairs (ground truth) and the families they are in; removed: "
          "documents the system removed; docs/s: wall clock, docs/CPU s: all its processes' CPU time.")


RUN_MINHASH = """
import json, sys
from pathlib import Path
from data_pipeline.dedup import GLOBAL_STAGES
src, out, cfg, workers = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3]), int(sys.argv[4])
print(json.dumps(GLOBAL_STAGES["minhash_dedup"](src, out, cfg, workers, "local", None)))
"""


# ---- tune: shingle schemes without LSH -------------------------------------------------------------------

SCHEMES = {"tokens n=5 (old)": ("tokens", 5), "tokens n=3": ("tokens", 3), "chars n=4": ("chars", 4),
           "chars n=5": ("chars", 5), "chars n=6": ("chars", 6)}


def tune(args) -> None:
    """Precision and recall of `stage Jaccard >= threshold` on the family pairs of one split."""
    import numpy as np

    from data_pipeline.dedup.minhash import MinHashConfig, jaccard_sorted, shingle_set

    _, labels, _, docs = load_benchmark(Path(args.out), args.convert_python)
    labels = [lab for lab in labels if lab["split"] == args.split]
    texts = dict(zip(docs["id"], docs["text"]))
    print(f"{args.split} split: {len(labels)} family pairs; P/R of stage Jaccard >= threshold against the ground truth")
    for name, (shingle, ngram) in SCHEMES.items():
        conf = MinHashConfig(shingle=shingle, ngram=ngram)
        sets = {i: shingle_set(texts[i], conf) for i in {x for lab in labels for x in (lab["a"], lab["b"])}}
        sims = np.array([jaccard_sorted(sets[lab["a"]], sets[lab["b"]]) for lab in labels])
        for threshold in args.thresholds:
            cells = []
            for lang in LANGS:
                sel = np.array([lab["lang"] == lang for lab in labels])
                true = np.array([lab["jaccard"] >= TRUTH_THRESHOLD for lab in labels])[sel]
                said = sims[sel] >= threshold
                tp = int((true & said).sum())
                cells.append(f"{lang} P {tp / max(1, said.sum()):.3f} R {tp / max(1, true.sum()):.3f}")
            print(f"{name:18s} J>={threshold:.2f}  " + "  ".join(cells))


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
import json, resource, sys
from pathlib import Path
from data_pipeline.dedup import GLOBAL_STAGES
src, out, workers, minhash = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
def cpu():  # this process and its pool workers (each pool is joined when its step ends)
    return sum(t for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
               for t in resource.getrusage(who)[:2])
for stage in ("exact_dedup", "minhash_dedup", "line_dedup"):
    before = cpu()
    stats = GLOBAL_STAGES[stage](src, out / stage, minhash if stage == "minhash_dedup" else {}, workers, "local", None)
    print(json.dumps({**stats, "cpu_seconds": cpu() - before}), flush=True)
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


def _run_stages(data: Path, out: Path, workers: int, minhash: dict) -> tuple[float, int, list[dict]]:
    """Wall seconds, peak RSS of the process tree, and the stats of exact, MinHash and line dedup."""
    shutil.rmtree(out, ignore_errors=True)
    t = time.time()
    child = subprocess.Popen([sys.executable, "-c", RUN_STAGES, str(data), str(out), str(workers), json.dumps(minhash)],
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
    if child.returncode != 0:
        raise SystemExit(f"scale run failed for {data}")
    return time.time() - t, peak[0], [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


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
        for name, minhash in OURS.items():
            seconds, peak, stats = _run_stages(data, root / f"scale-{n}-out", args.workers, minhash)
            mb = stats[0]["bytes_in"] / 1e6
            mh = stats[1]
            rows.append((n, name, mb, seconds, peak / 2**30, mh))
            print(f"{n} docs ({mb:.0f} MB), {name}: {seconds:.0f}s, peak RSS {peak / 2**30:.2f} GiB (all processes), "
                  f"stages { {s['stage']: round(s['seconds'], 1) for s in stats} }, minhash removed {mh['excluded']}, "
                  f"pairs {mh['candidate_pairs']}/{mh['verified_pairs']}, steps {mh['step_seconds']}")
    print(f"\n   docs {'minhash settings':20s}     MB  wall s  docs/s  peak RSS GiB  minhash: wall s  CPU s  "
          "docs/s  docs/CPU s")
    for n, name, mb, seconds, rss, mh in rows:
        print(f"{n:7d} {name:20s} {mb:6.0f} {seconds:7.0f} {n / seconds:7.0f} {rss:13.2f} {mh['seconds']:16.1f} "
              f"{mh['cpu_seconds']:6.1f} {n / mh['seconds']:7.0f} {n / mh['cpu_seconds']:11.0f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("quality")
    q.add_argument("--datatrove-python", default="", help="interpreter with datatrove installed")
    t = sub.add_parser("tune")
    t.add_argument("--split", choices=SPLITS, default="tune")
    t.add_argument("--thresholds", type=float, nargs="+", default=[0.7, 0.75, 0.8, 0.85])
    s = sub.add_parser("scale")
    s.add_argument("--sizes", type=int, nargs="+", default=[100_000])
    for p in (q, t):
        p.add_argument("--convert-python", required=True, help="interpreter with zhconv or opencc installed")
    for p in (q, t, s):
        p.add_argument("--workers", type=int, default=2)
        p.add_argument("--out", default=str(REPO / "bench_out" / "dedup"))
    args = ap.parse_args()
    {"quality": quality, "tune": tune, "scale": scale}[args.cmd](args)


if __name__ == "__main__":
    main()
