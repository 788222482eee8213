"""Scale benchmark of the whole data pipeline on a synthetic corpus with planted duplicates.

    nice -n 10 python bench/bench_scale.py --docs 1000000 --workers 2 --out /work/scale

Corpus (built once under OUT/corpus-<N>/, one Parquet file (zstd) of 50,000 documents at a time,
each written atomically, so an interrupted build resumes; needs ../shared/corpus):
  * an *original* document takes a real corpus document as template (half drawn per document,
    half per source: about 2.2 kB of text a document), its source, language, layout and length (a
    window of at most 4,000 characters of a long one), and splices every line of at least 4
    characters: the first 20-50 % of the template line, then as many characters from the ends of
    random lines of the same language (cut at a space in English), so lines keep a real ending. The
    corpus has about 85,000 documents and 1.5 million lines: siblings of one template share at most
    half their text, and a 10M-document corpus has no accidental near duplicates (they would show
    up as unplanted removals below);
  * 10 % of the documents are *exact copies* of a random original (byte for byte), 10 % *near
    copies*: `dedup_data.perturbed_copy` (word / character edits, reflow, truncation, paragraph
    swaps, added boilerplate). Copies are spread over the whole corpus (a seeded permutation);
  * truth, independent of the MinHash shingles: a near copy is a duplicate of its original iff the
    Jaccard of their character 5-gram sets (`dedup_data.truth_jaccard`) is >= 0.8, computed when the
    copy is made and stored in OUT/corpus-<N>/truth/ with its original's position and its role.

Run: the default stages of `configs/data_pipeline.yaml` (normalize, annotate, clean_lines, filter)
then exact_dedup, minhash_dedup, line_dedup (`--stages` to change), `python -m data_pipeline` with
`workers=--workers`, one invocation per segment (the runner resumes a finished stage list and runs
only the appended stages), each in a fresh process tree that is measured:
  wall seconds; CPU seconds (user + sys of every process of the tree, from RUSAGE_CHILDREN);
  peak RSS of the driver and of the largest other process (psutil, polled every 0.25 s);
  disk: peak growth of OUT/run-<N>/ while the segment runs, the stage directory after it
  (kept/, excluded/, each work artifact), and bytes per input document of each.
Planted duplicates, per dedup stage (exact, MinHash), over the documents that reach it (earlier
stages filter some); an original and its exact copies are one *text*, whichever of them survived:
  exact recall: removals of a text's extra occurrences / (occurrences that entered - 1), summed
  over texts; near recall: near copies with truth >= 0.8 that entered with their text, and where
  the copy or an occurrence of the text was removed; precision: removals that belong to such a
  truth pair (an extra occurrence of a text, a text with a true near copy in, a true near copy with
  its text in) over all removals. Other removals inside a planted family (a near copy below the
  threshold, two near copies whose original was filtered) are counted apart, as errors; removals
  outside any planted family are unplanted (errors or accidental duplicates of the generator).
Prints a table and writes OUT/scale-<N>.json.
"""
from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dedup_data import CORPUS, TRUTH_THRESHOLD, load_corpus, perturbed_copy, truth_jaccard  # noqa: E402

from stack_common.atomic import atomic_path, atomic_write_json, read_json  # noqa: E402
from stack_common.shards import read_table  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
GENERATOR = "splice-v3"
DOCS_PER_FILE = 50_000
P_EXACT, P_NEAR = 0.10, 0.10          # shares of all documents
MAX_TEMPLATE_CHARS = 4_000
MIN_SPLICE_CHARS = 4
ORIGINAL, EXACT, NEAR = 0, 1, 2
ROLES = {ORIGINAL: "original", EXACT: "exact", NEAR: "near"}
DEFAULT_STAGES = ["normalize", "annotate", "clean_lines", "filter", "exact_dedup", "minhash_dedup", "line_dedup"]
DEDUP_TRUTH = {"exact_dedup", "minhash_dedup"}


# ---- corpus --------------------------------------------------------------------------------------------

def plan(n_docs: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per output position: the position of its family's original, its role, and the original's
    index (the seed of its text). Originals are their own family."""
    rng = np.random.default_rng(seed)
    n_orig = int(round(n_docs / (1 + P_EXACT + P_NEAR)))
    n_copies = n_docs - n_orig
    orig_index = np.concatenate([np.arange(n_orig), rng.integers(0, n_orig, n_copies)])
    role = np.concatenate([np.full(n_orig, ORIGINAL, np.int8),
                           np.where(rng.random(n_copies) < P_EXACT / (P_EXACT + P_NEAR), EXACT, NEAR).astype(np.int8)])
    order = rng.permutation(n_docs)                 # output position -> entry
    position_of_entry = np.empty(n_docs, np.int64)
    position_of_entry[order] = np.arange(n_docs)
    orig_index, role = orig_index[order], role[order]
    return position_of_entry[orig_index], role, orig_index


class Templates:
    """The real documents originals are made from, and a line pool per language."""

    def __init__(self) -> None:
        self.docs = [d for d in load_corpus() if d["text"].strip()]
        self.by_source: dict[str, list[dict]] = {}
        self.lines: dict[str, list[str]] = {}
        for d in self.docs:
            self.by_source.setdefault(d["source"], []).append(d)
            self.lines.setdefault(d["lang"], []).extend(
                line for line in d["text"].split("\n") if len(line.strip()) >= MIN_SPLICE_CHARS)
        self.sources = sorted(self.by_source)

    def original(self, seed: int, index: int) -> tuple[str, str, str]:
        """(text, source, lang) of original number `index`. Half the templates are drawn per
        document (short fortunes and reviews dominate), half per source (long manuals): about 2 kB a
        document, as in the issue's 1M corpus (1.94 GiB)."""
        rng = random.Random(f"{seed}:{index}")
        if rng.random() < 0.5:
            doc = self.docs[rng.randrange(len(self.docs))]
        else:
            docs = self.by_source[self.sources[rng.randrange(len(self.sources))]]
            doc = docs[rng.randrange(len(docs))]
        text = doc["text"]
        if len(text) > MAX_TEMPLATE_CHARS:
            start = text.rfind("\n", 0, rng.randrange(len(text) - MAX_TEMPLATE_CHARS)) + 1
            text = text[start:start + MAX_TEMPLATE_CHARS]
        pool = self.lines[doc["lang"]]
        return "\n".join(splice(line, pool, rng) for line in text.split("\n")), doc["source"], doc["lang"]


def splice(line: str, pool: list[str], rng: random.Random) -> str:
    """The first 20-50 % of `line`, then as many characters of the ends of random lines of `pool`
    (word-aligned in Latin text): the layout and length of `line`, a real line ending (its
    punctuation), text found in no other document."""
    if len(line.strip()) < MIN_SPLICE_CHARS:
        return line
    share = rng.uniform(0.2, 0.5)
    cut = int(len(line) * share)
    latin = line[cut - 1:cut].isascii()
    if latin:
        space = line.rfind(" ", 0, cut)
        cut = space + 1 if space > 0 else cut
    tail, need = [], len(line) - cut
    while need > 0:
        other = pool[rng.randrange(len(pool))]
        start = max(int(len(other) * share), len(other) - need)
        if latin:
            space = other.find(" ", start)
            start = space + 1 if 0 <= space < len(other) - 1 else start
        tail.append(other[start:])
        need -= max(1, len(other) - start)
    return line[:cut] + "".join(reversed(tail))


_TEMPLATES: Templates | None = None


def make_file(corpus: Path, file_no: int, n_docs: int, seed: int) -> str:
    """Write docs/part-NNNNN.parquet and truth/part-NNNNN.parquet (positions file_no * DOCS_PER_FILE ...)."""
    global _TEMPLATES
    docs_path, truth_path = corpus / "docs" / f"part-{file_no:05d}.parquet", corpus / "truth" / f"part-{file_no:05d}.parquet"
    if truth_path.is_file() and docs_path.is_file():
        return "skipped"
    _TEMPLATES = _TEMPLATES or Templates()
    family, role, orig_index = plan(n_docs, seed)
    lo, hi = file_no * DOCS_PER_FILE, min(n_docs, (file_no + 1) * DOCS_PER_FILE)
    rows, jaccard = {"id": [], "text": [], "source": []}, np.full(hi - lo, np.nan, np.float32)
    for k, pos in enumerate(range(lo, hi)):
        text, source, lang = _TEMPLATES.original(seed, int(orig_index[pos]))
        if role[pos] == NEAR:
            copy = perturbed_copy(text, "en" if lang == "en" else "zh", random.Random(f"{seed}:copy:{pos}"))[0]
            jaccard[k] = truth_jaccard(text, copy)
            text = copy
        rows["id"].append(f"d{pos:010d}")
        rows["text"].append(text)
        rows["source"].append(source)
    with atomic_path(docs_path) as tmp:
        pq.write_table(pa.table(rows), tmp, compression="zstd")
    truth = pa.table({"position": np.arange(lo, hi), "family": family[lo:hi], "role": role[lo:hi], "jaccard": jaccard})
    with atomic_path(truth_path) as tmp:     # written last: marks the file complete
        pq.write_table(truth, tmp, compression="zstd")
    return "built"


def build_corpus(corpus: Path, n_docs: int, seed: int, workers: int) -> dict:
    info_path = corpus / "corpus.json"
    settings = {"generator": GENERATOR, "docs": n_docs, "seed": seed, "docs_per_file": DOCS_PER_FILE,
                "p_exact": P_EXACT, "p_near": P_NEAR, "truth_threshold": TRUTH_THRESHOLD}
    if info_path.is_file():
        info = read_json(info_path)
        if {k: info.get(k) for k in settings} == settings:
            return info
        raise SystemExit(f"{corpus} holds another corpus ({info_path}); remove it or use another --out")
    if corpus.exists() and (corpus / "settings.json").is_file() and read_json(corpus / "settings.json") != settings:
        raise SystemExit(f"{corpus} holds a partial build with other settings; remove it")
    corpus.mkdir(parents=True, exist_ok=True)
    atomic_write_json(corpus / "settings.json", settings)
    n_files = -(-n_docs // DOCS_PER_FILE)
    t = time.time()
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        done = list(pool.map(make_file, [corpus] * n_files, range(n_files), [n_docs] * n_files, [seed] * n_files))
    truth = read_truth(corpus)
    text_bytes = sum(pq.ParquetFile(p).metadata.row_group(0).column(1).total_uncompressed_size
                     for p in sorted((corpus / "docs").glob("*.parquet")))
    info = {**settings, "built_files": done.count("built"), "seconds": round(time.time() - t, 1),
            "files": n_files, "disk_bytes": dir_bytes(corpus / "docs"), "text_bytes_uncompressed": text_bytes,
            "roles": {ROLES[r]: int((truth["role"] == r).sum()) for r in ROLES},
            "near_at_or_above_threshold": int(((truth["role"] == NEAR) & (truth["jaccard"] >= TRUTH_THRESHOLD)).sum())}
    atomic_write_json(info_path, info)
    return info


def read_truth(corpus: Path) -> dict[str, np.ndarray]:
    table = pq.read_table(corpus / "truth")
    return {name: table.column(name).to_numpy() for name in ("family", "role", "jaccard")}


# ---- measuring a run --------------------------------------------------------------------------------------

def dir_bytes(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                pass
    return total


class Sampler(threading.Thread):
    """Peak RSS of the driver and of its largest descendant, and peak disk growth of a directory.
    Every CHECKPOINT_S it hands the figures so far to `checkpoint` (CPU from psutil: the tree's
    own and reaped-children times), so a segment killed with the benchmark keeps what it measured."""

    def __init__(self, pid: int, out: Path, disk0: int | None = None, checkpoint=None) -> None:
        super().__init__(daemon=True)
        self.proc, self.out, self.stop, self.checkpoint = psutil.Process(pid), out, threading.Event(), checkpoint
        self.driver = self.worker = self.tree = 0
        self.disk0 = disk0 if disk0 is not None else dir_bytes(out) if out.exists() else 0
        self.disk_peak = 0

    def run(self) -> None:
        tick = 0
        while not self.stop.wait(0.25):
            try:
                driver = self.proc.memory_info().rss
                children = [c.memory_info().rss for c in self.proc.children(recursive=True) if c.is_running()]
            except psutil.Error:
                continue
            self.driver, self.worker = max(self.driver, driver), max(self.worker, max(children, default=0))
            self.tree = max(self.tree, driver + sum(children))
            if tick % 8 == 0 and self.out.exists():
                self.disk_peak = max(self.disk_peak, dir_bytes(self.out) - self.disk0)
            if self.checkpoint and tick % int(CHECKPOINT_S / 0.25) == 0:
                self.checkpoint(tree_cpu(self.proc))
            tick += 1


CHECKPOINT_S = 30
PEAKS = ("peak_rss_driver", "peak_rss_largest_worker", "peak_rss_tree", "disk_peak_growth")


def tree_cpu(proc: psutil.Process) -> float:
    """User + system seconds of a live process tree, with what its members' reaped children used."""
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            t = p.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def combine(before: dict, now: dict) -> dict:
    """Figures of a segment over its attempts: times add up, peaks are the largest."""
    out = {k: round(before.get(k, 0) + now[k], 1) for k in ("wall_s", "cpu_s")}
    out.update({k: max(before.get(k, 0), now[k]) for k in PEAKS})
    return out


def run_segment(corpus: Path, out: Path, stages: list[str], workers: int, extra: list[str],
                progress: Path | None = None) -> dict:
    """Run `stages` (the runner skips those already committed) and measure the new work. With a
    `progress` file, the figures so far are saved there every CHECKPOINT_S; if it already holds an
    interrupted attempt at the same stages, that attempt's figures are added (the runner redoes only
    its unfinished units)."""
    cmd = [sys.executable, "-m", "data_pipeline", f"input={corpus / 'docs'}", f"output={out}", f"workers={workers}",
           f"stages=[{','.join(stages)}]", *extra]
    env = {**os.environ, "PYTHONPATH": str(REPO), "BC_NO_PROGRESS": "1"}
    before = read_json(progress) if progress and progress.is_file() else {}
    if before.get("stages") != stages:
        before = {}
    attempts = before.get("attempts", 0) + 1
    cpu0, t = children_cpu(), time.time()
    child = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def figures(cpu: float) -> dict:
        return {"wall_s": time.time() - t, "cpu_s": cpu, "peak_rss_driver": sampler.driver,
                "peak_rss_largest_worker": sampler.worker, "peak_rss_tree": sampler.tree,
                "disk_peak_growth": sampler.disk_peak}

    def checkpoint(cpu: float) -> None:
        atomic_write_json(progress, {"stages": stages, "attempts": attempts, "disk0": sampler.disk0,
                                     **combine(before, figures(cpu))})

    sampler = Sampler(child.pid, out, before.get("disk0"), checkpoint if progress else None)
    sampler.start()
    log = child.communicate()[0]
    sampler.stop.set()
    sampler.join()
    if child.returncode:
        sys.stderr.write(log[-5000:])
        raise SystemExit(f"pipeline failed (exit {child.returncode}): {' '.join(cmd)}")
    sampler.disk_peak = max(sampler.disk_peak, dir_bytes(out) - sampler.disk0)
    return {**combine(before, figures(children_cpu() - cpu0)), "attempts": attempts, "command": " ".join(cmd)}


def segments_of(stages: list[str]) -> list[list[str]]:
    """The runner's segments: consecutive per-document stages fuse, each dedup stage is alone."""
    from data_pipeline.config import PER_DOC_STAGES

    out: list[list[str]] = []
    for stage in stages:
        if stage in PER_DOC_STAGES and out and out[-1][-1] in PER_DOC_STAGES:
            out[-1].append(stage)
        else:
            out.append([stage])
    return out


def stage_disk(stage_dir: Path, n_docs: int) -> dict:
    """Bytes on disk of the stage directory and of each of its parts (work artifacts one level in)."""
    parts = {}
    for child in sorted(stage_dir.iterdir()):
        if child.name == "work" and child.is_dir():
            for art in sorted(child.iterdir()):
                parts[f"work/{art.name}"] = dir_bytes(art) if art.is_dir() else art.stat().st_blocks * 512
        elif child.is_dir():
            parts[child.name] = dir_bytes(child)
    total = dir_bytes(stage_dir)
    return {"bytes": total, "bytes_per_doc": round(total / n_docs, 1), "parts": parts,
            "parts_bytes_per_doc": {k: round(v / n_docs, 1) for k, v in parts.items()}}


# ---- planted duplicates ---------------------------------------------------------------------------------

def positions(shard_dir: Path) -> np.ndarray:
    if not (shard_dir / "manifest.json").is_file():
        return np.zeros(0, np.int64)
    ids = read_table(shard_dir, columns=["id"]).column("id")
    return pc.cast(pc.utf8_slice_codeunits(ids, 1), pa.int64()).to_numpy()


def planted_scores(stage_dir: Path, truth: dict[str, np.ndarray]) -> dict:
    """Recall and precision of a dedup stage on the planted duplicates that entered it. An original
    and its exact copies are one text (either may be the one an earlier stage kept); a near copy is a
    true duplicate of that text iff its truth Jaccard >= TRUTH_THRESHOLD."""
    n = len(truth["role"])
    family, role, jac = truth["family"], truth["role"], truth["jaccard"]
    entered, removed = np.zeros(n, bool), np.zeros(n, bool)
    gone = positions(stage_dir / "excluded")
    entered[positions(stage_dir / "kept")] = entered[gone] = True
    removed[gone] = True
    same_text = role != NEAR                                   # the original and its exact copies
    near_true = (role == NEAR) & (jac >= TRUTH_THRESHOLD)

    def per_family(mask: np.ndarray) -> np.ndarray:
        return np.bincount(family[mask], minlength=n)
    text_in, text_kept = per_family(same_text & entered), per_family(same_text & entered & ~removed)
    near_in, family_in = per_family(near_true & entered), per_family(entered)
    # exact: a family whose text entered k times should leave it once
    expected = np.maximum(text_in - 1, 0)
    exact_caught = np.minimum(per_family(same_text & removed), expected)
    # near: a true near copy that entered with its text is caught if the copy, or every occurrence
    # of the text, was removed
    near_pairs = near_true & entered & (text_in[family] > 0)
    near_caught = near_pairs & (removed | (text_kept[family] == 0))
    explained = removed & ((same_text & ((text_in[family] > 1) | (near_in[family] > 0))) |
                           (near_true & (text_in[family] > 0)))
    same_family = removed & ~explained & (family_in[family] > 1)
    result = {"docs_in": int(entered.sum()), "removed": int(removed.sum()),
              "removed_planted": int(explained.sum()),
              "removed_same_family_no_truth_pair": int(same_family.sum()),
              "removed_unplanted": int((removed & ~explained & ~same_family).sum()),
              "precision": round(float(explained.sum() / max(1, removed.sum())), 4),
              "exact_expected_removals": int(expected.sum()),
              "exact_recall": round(float(exact_caught.sum() / expected.sum()), 4) if expected.sum() else None,
              "near_pairs_in": int(near_pairs.sum()),
              "near_recall": round(float(near_caught.sum() / near_pairs.sum()), 4) if near_pairs.sum() else None}
    return result


# ---- main ---------------------------------------------------------------------------------------------

def gib(x: float) -> str:
    return f"{x / 2**30:.2f}"


def check_disk(path: Path, need: int, what: str) -> None:
    free = shutil.disk_usage(path).free
    print(f"{what}: about {need / 1e9:.1f} GB needed, {free / 1e9:.1f} GB free on {path}")
    if need > free:
        raise SystemExit(f"not enough disk for {what}: {need / 1e9:.1f} GB needed, {free / 1e9:.1f} GB free")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default="/work/scale")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stages", nargs="+", default=DEFAULT_STAGES)
    ap.add_argument("--project", metavar="JSON", help="print the 100M / 1B projection of a finished run's OUT/scale-<N>.json")
    ap.add_argument("--build-only", action="store_true", help="build (or finish building) the corpus, run nothing")
    ap.add_argument("--keep-run", action="store_true", help="keep OUT/run-<N> (default: removed after the figures)")
    ap.add_argument("--resume", action="store_true", help="keep the segments an interrupted run of the same N "
                    "finished (its OUT/run-<N> and scale-<N>.partial.json) and run the rest; the code may have changed "
                    "for the stages still to run")
    ap.add_argument("overrides", nargs="*", help="extra `python -m data_pipeline` overrides, e.g. dedup.minhash.num_perm=64")
    args = ap.parse_args()
    if args.project:
        return project(read_json(Path(args.project)))
    if not args.docs:
        ap.error("--docs N is required (or --project JSON)")
    if not CORPUS.is_dir():
        raise SystemExit(f"{CORPUS} is missing: the benchmark builds its corpus from it")
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    corpus, run = root / f"corpus-{args.docs}", root / f"run-{args.docs}"
    if not (corpus / "corpus.json").is_file():
        check_disk(root, args.docs * 1_200, "the corpus (~1.2 kB a document, zstd Parquet)")
    info = build_corpus(corpus, args.docs, args.seed, args.workers)
    print(f"corpus {corpus}: {info['docs']} docs, {info['text_bytes_uncompressed'] / 2**30:.2f} GiB of text, "
          f"{info['disk_bytes'] / 2**30:.2f} GiB on disk, roles {info['roles']}, near copies with truth >= "
          f"{TRUTH_THRESHOLD}: {info['near_at_or_above_threshold']} (built in {info['seconds']}s)")
    if args.build_only:
        return
    # kept/ + excluded/ of each segment hold the corpus again (zstd Arrow); with keep_stage_outputs=false
    # only the previous segment's and the running one's (measured at 1M: at most 1.7x the corpus while a
    # segment ran); MinHash keeps the shingles of its candidate documents uncompressed while it runs (4
    # bytes a character, about 2x the text's UTF-8 bytes, for the 15-20 % of documents in a candidate pair
    # here; 0.5x the text leaves room).
    copies = 1 if "keep_stage_outputs=false" in args.overrides else len(segments_of(args.stages))
    need = info["disk_bytes"] * (1 + copies) + \
        info["text_bytes_uncompressed"] // 2 * any(s.startswith("minhash_dedup") for s in args.stages)
    check_disk(root, need - (dir_bytes(run) if run.exists() else 0), "the run")
    partial, progress = root / f"scale-{args.docs}.partial.json", root / f"scale-{args.docs}.segment.json"
    resuming = args.resume and run.is_dir() and (partial.is_file() or progress.is_file())
    rows = read_json(partial)["rows"] if resuming and partial.is_file() else []
    if not resuming:
        shutil.rmtree(run, ignore_errors=True)
        progress.unlink(missing_ok=True)
    truth = read_truth(corpus)
    done = []
    for segment in segments_of(args.stages):
        done += segment
        if args.resume and {r["stage"] for r in rows} >= set(segment):
            print(f"  {'+'.join(segment)}: measured by the interrupted run, kept", flush=True)
            continue
        measured = run_segment(corpus, run, done, args.workers, args.overrides, progress)
        stage_dirs = {d.name.split("_", 1)[1]: d for d in (run / "stages").iterdir()}
        for name in segment:
            stage_dir = stage_dirs[name]
            stats = read_json(stage_dir / "stats.json")
            row = {"stage": name, "segment": "+".join(segment), "docs_in": stats["docs_in"], "docs_out": stats["docs_out"],
                   "stage_seconds": stats.get("seconds"), "disk": stage_disk(stage_dir, info["docs"]), **measured,
                   "stats": stats}
            if name.partition("@")[0] in DEDUP_TRUTH:
                row["planted"] = planted_scores(stage_dir, truth)
            rows.append(row)
        atomic_write_json(partial, {"corpus": info, "rows": rows})
        progress.unlink(missing_ok=True)
        print(f"  {'+'.join(segment)}: {measured['wall_s']}s wall, {measured['cpu_s']}s CPU, peak RSS driver "
              f"{gib(measured['peak_rss_driver'])} GiB, largest worker {gib(measured['peak_rss_largest_worker'])} GiB"
              + (f" ({measured['attempts']} attempts: interrupted, resumed)" if measured["attempts"] > 1 else ""),
              flush=True)
    run_stats = read_json(run / "stats.json")
    report = {"corpus": info, "workers": args.workers, "stages": args.stages, "overrides": args.overrides,
              "wall_s": round(sum(r["wall_s"] for r in rows if r["stage"] == r["segment"].split("+")[-1]), 1), "cpu_s": round(sum(r["cpu_s"] for r in rows if r["stage"] == r["segment"].split("+")[-1]), 1),
              "peak_rss_driver": max(r["peak_rss_driver"] for r in rows),
              "peak_rss_largest_worker": max(r["peak_rss_largest_worker"] for r in rows),
              "peak_rss_tree": max(r["peak_rss_tree"] for r in rows),
              "run_disk_bytes": dir_bytes(run), "docs_kept": run_stats["docs_kept"],
              "reconciled": run_stats["reconciled"], "rows": rows,
              "host": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}}
    atomic_write_json(root / f"scale-{args.docs}.json", report)
    (root / f"scale-{args.docs}.partial.json").unlink()
    print_table(report)
    if not args.keep_run:
        shutil.rmtree(run)


def print_table(report: dict) -> None:
    n = report["corpus"]["docs"]
    print(f"\n{n} documents, {report['workers']} workers: {report['wall_s']}s wall, {report['cpu_s']}s CPU, peak RSS "
          f"driver {gib(report['peak_rss_driver'])} GiB / largest worker {gib(report['peak_rss_largest_worker'])} GiB / "
          f"tree {gib(report['peak_rss_tree'])} GiB, run dir {report['run_disk_bytes'] / 1e9:.2f} GB, kept "
          f"{report['docs_kept']}, reconciled {report['reconciled']}")
    print(f"{'stage':14s} {'docs in':>9s} {'docs out':>9s} {'stage s':>8s} {'wall s':>7s} {'CPU s':>7s} "
          f"{'RSS drv':>7s} {'RSS wkr':>7s} {'disk GB':>7s} {'B/doc':>7s} {'peak+GB':>7s}  planted (precision; recall exact / near)")
    seen = set()
    for r in report["rows"]:
        first = r["segment"] not in seen
        seen.add(r["segment"])
        seg = (f"{r['wall_s']:7.1f} {r['cpu_s']:7.1f} {gib(r['peak_rss_driver']):>7s} {gib(r['peak_rss_largest_worker']):>7s}"
               if first else f"{'(fused)':>7s} {'':7s} {'':7s} {'':7s}")
        p = r.get("planted")
        planted = (f"P {p['precision']:.4f} ({p['removed_unplanted']} unplanted, {p['removed_same_family_no_truth_pair']} "
                   f"same family); R {p['exact_recall']} / {p['near_recall']} of {p['exact_expected_removals']} / "
                   f"{p['near_pairs_in']}" if p else "")
        print(f"{r['stage']:14s} {r['docs_in']:9d} {r['docs_out']:9d} {r['stage_seconds'] or 0:8.1f} {seg} "
              f"{r['disk']['bytes'] / 1e9:7.3f} {r['disk']['bytes_per_doc']:7.0f} "
              f"{(r['disk_peak_growth'] / 1e9 if first else 0):7.3f}  {planted}")
    print(f"(B/doc: bytes of the stage directory per corpus document; peak+GB: growth of the run directory while "
          f"the segment ran; n = {n})")


# Work artifacts that a distributed run repartitions by key (every byte crosses the network once);
# the others are read back by the task of their own shard. Shingles are read per candidate pair.
SHUFFLED = {"work/hashes", "work/bands", "work/edges", "work/candidates", "work/verified", "work/units", "work/docs"}


def project(report: dict, sizes: tuple[int, ...] = (100_000_000, 1_000_000_000), budget: int = 1 << 30) -> None:
    """Linear projection of each stage's artifacts and CPU time from a measured run: bytes per
    document that entered the stage x the share of documents that reach it (as measured) x N."""
    n = report["corpus"]["docs"]
    print(f"projection from {n} measured documents (linear in N; shares reaching each stage as measured)")
    print(f"{'stage':14s} {'artifact':24s} {'B/doc in':>9s} " + " ".join(f"{f'GB @{m // 10**6}M':>10s} {'parts':>6s}"
                                                                        for m in sizes) + "  kind")
    for r in report["rows"]:
        share = r["docs_in"] / n
        for part, size in r["disk"]["parts"].items():
            if size < 64 << 10 and n >= 100_000:
                continue
            per_doc = size / max(1, r["docs_in"])
            cols = " ".join(f"{m * share * per_doc / 1e9:10.1f} {-(-int(m * share * per_doc) // budget):6d}" for m in sizes)
            kind = "shuffle" if part in SHUFFLED else "per shard" if part.startswith("work/") else "output"
            print(f"{r['stage']:14s} {part:24s} {per_doc:9.1f} {cols}  {kind}")
    seen = set()
    for r in report["rows"]:
        if r["segment"] in seen:
            continue
        seen.add(r["segment"])
        print(f"{r['segment']:40s} CPU s/doc {r['cpu_s'] / n * 1e3:.2f} ms: " +
              ", ".join(f"{m * r['cpu_s'] / n / 3600:,.0f} CPU-h @{m // 10**6}M" for m in sizes))
    print(f"(parts: partitions of at most {budget >> 20} MiB, a task's share when the artifact is partitioned)")


if __name__ == "__main__":
    main()
