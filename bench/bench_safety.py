"""Speed, peak memory and what they remove: the harmful, pii and decontaminate stages on real text.

    python bench/bench_safety.py [--corpus ../shared/corpus] [--mb 0.5] [--eval-items 14000] [--harmful-model M]

Takes up to --mb MB of text from each Parquet file of the corpus (its `lang` column is the
language) and runs each stage with the default config, one stage per fresh process (spawned),
printing docs/s and MB/s (CPU time of the stage alone), the process's peak RSS (and its RSS with
the documents loaded, before the stage is built), and what it removed or changed. Decontamination runs against a made-up evaluation set the size of MMLU's test split:
--eval-items windows of 20 to 80 tokens cut from corpus documents outside the slice (so only
text the corpus repeats is hit), plus 25 windows cut from documents inside it (planted: each
must be found) and the demo's hand-made items (data/sample/eval_demo.jsonl).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def load_slice(corpus: Path, mb: float) -> tuple[list[dict], list[dict]]:
    """(documents in the slice, documents after it) per file, in file order."""
    inside, outside = [], []
    for path in sorted(corpus.glob("*.parquet")):
        budget = mb * 1e6
        for row in pq.read_table(path, columns=["id", "lang", "text"]).to_pylist():
            row["source"] = path.stem
            (inside if budget > 0 else outside).append(row)
            budget -= len(row["text"].encode("utf-8"))
    return inside, outside


def window(text: str, rng: random.Random) -> str | None:
    """A run of 20-80 tokens of a text (words, or Han characters), as written."""
    han = sum("\u4e00" <= c <= "\u9fff" for c in text[:2000]) > 200
    if han:
        size = rng.randint(20, 80)
        if len(text) <= size:
            return None
        start = rng.randrange(len(text) - size)
        return text[start:start + size]
    words = text.split()
    size = rng.randint(20, 80)
    if len(words) <= size:
        return None
    start = rng.randrange(len(words) - size)
    return " ".join(words[start:start + size])


def make_eval_set(inside: list[dict], outside: list[dict], items: int, out: Path) -> tuple[Path, set[str]]:
    """Items of one field, `prompt`, each with at least one 13-gram."""
    from data_pipeline.decontaminate import ngram_hashes

    rng = random.Random(0)
    rows, planted = [], set()
    while len(rows) < items and outside:
        text = window(rng.choice(outside)["text"], rng)
        if text and len(ngram_hashes(text, 13)):
            rows.append({"prompt": text})
    while len(planted) < 25:
        doc = rng.choice(inside)
        text = window(doc["text"], rng)
        if text and len(ngram_hashes(text, 13)) and doc["id"] not in planted:
            rows.append({"prompt": text})
            planted.add(doc["id"])
    path = out / "made_up_eval.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path, planted


def run_stage(stage: str, docs: list[dict], overrides: list[str], result) -> None:
    from data_pipeline.__main__ import load_config
    from data_pipeline.readers import Document
    from data_pipeline.steps import build_steps, utf8_len

    loaded_mib = peak_rss_mib()
    cfg = load_config(overrides)
    started = time.perf_counter()
    step, = build_steps([stage], cfg)
    setup = time.perf_counter() - started
    reasons, removed_by_source = Counter(), Counter()
    cpu = time.process_time()
    for row in docs:
        doc = Document(id=row["id"], text=row["text"], source=row["source"], lang=row["lang"])
        reason, _ = step(doc, utf8_len(doc.text))
        if reason:
            reasons[reason] += 1
            removed_by_source[row["source"]] += 1
    stats = step.stats()
    result.put({"stage": stage, "setup_s": setup, "cpu_s": time.process_time() - cpu, "stats": stats,
                "loaded_mib": loaded_mib, "peak_mib": peak_rss_mib(),
                "removed_by_source": dict(removed_by_source.most_common(5))})


def peak_rss_mib() -> float:
    """This process's peak RSS (VmHWM: unlike ru_maxrss, not carried over from the parent across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(stage: str, docs: list[dict], overrides: list[str]) -> dict:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=run_stage, args=(stage, docs, overrides, queue))
    child.start()
    result = queue.get()
    child.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default=str(REPO.parent / "shared" / "corpus"))
    parser.add_argument("--mb", type=float, default=0.5, help="MB of text per corpus file")
    parser.add_argument("--eval-items", type=int, default=14000, help="made-up evaluation items (MMLU test: 14,042)")
    parser.add_argument("--harmful-model", help="a model from task=harmful_train: the harmful stage also scores")
    args = parser.parse_args()
    inside, outside = load_slice(Path(args.corpus), args.mb)
    mb = sum(len(d["text"].encode("utf-8")) for d in inside) / 1e6
    print(f"slice: {len(inside):,} documents, {mb:.1f} MB from {args.corpus} ({args.mb} MB per file)")
    with tempfile.TemporaryDirectory() as tmp:
        eval_path, planted = make_eval_set(inside, outside, args.eval_items, Path(tmp))
        runs = {"harmful": [f"harmful.model={args.harmful_model}"] if args.harmful_model else [], "pii": [],
                "decontaminate": [f"decontaminate.eval_sets={{made_up: [{eval_path}], "
                                  f"demo: [{REPO}/data/sample/eval_demo.jsonl]}}"]}
        results = [measure(stage, inside, overrides) for stage, overrides in runs.items()]
        hit_ids = contaminated_ids(inside, runs["decontaminate"])
    print("\n| stage | docs/s (1 core) | MB/s | setup s | peak RSS MiB (documents loaded: MiB) | removed | changed |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        s = r["stats"]
        removed = ", ".join(f"{k} {v}" for k, v in s["excluded"].items()) or "0"
        changed = (", ".join(f"{k} {v}" for k, v in s.get("replaced", {}).items()) + f" in {s['docs_changed']} docs"
                   if r["stage"] == "pii" else "-")
        print(f"| {r['stage']} | {s['docs_in'] / r['cpu_s']:,.0f} | {s['bytes_in'] / 1e6 / r['cpu_s']:.1f} | "
              f"{r['setup_s']:.1f} | {r['peak_mib']:.0f} ({r['loaded_mib']:.0f}) | {removed} | {changed} |")
    for r in results:
        if r["removed_by_source"]:
            print(f"{r['stage']} removed most from: {r['removed_by_source']}")
    decon = results[2]["stats"]
    print(f"decontaminate eval sets: {decon['eval_sets']}")
    print(f"planted windows found: {len(planted & hit_ids)} of {len(planted)}; documents hit in all: {len(hit_ids)}")


def contaminated_ids(docs: list[dict], overrides: list[str]) -> set[str]:
    from data_pipeline.__main__ import load_config
    from data_pipeline.decontaminate import Decontaminator

    matcher = Decontaminator(load_config(overrides).decontaminate)
    return {d["id"] for d in docs if matcher.hits(d["text"])}


if __name__ == "__main__":
    main()
