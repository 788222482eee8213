"""What `normalize` and `clean_lines` change on real text, per source and reason, and their speed.

    python bench/bench_normalize.py [--corpus ../shared/corpus] [--mb 2] [--baseline 140e862]

For every Parquet file of the corpus (up to --mb MB of text each, the corpus's own `lang` column
choosing the rule set), runs the default-config Normalize and CleanLines stages and prints, per
source: documents, documents changed per normalize reason, lines removed per clean_lines reason;
then CPU seconds and MB/s of each stage on one core. As an independent check of the old default
(`collapse_spaces` with trailing-space stripping), it also counts documents with a run of 2+
spaces/tabs after a non-space character or a line ending in a space or tab: text the old default
rewrote and the current one keeps. With --baseline COMMIT, the normalize and clean_lines code and
default rules of that commit (read with `git show`) run on the same documents: documents and
characters each version changes, and CPU seconds of each.
"""
from __future__ import annotations

import argparse
import os
import importlib
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

OLD_COLLAPSE = re.compile(r"\S[ \t]{2,}|[ \t]$", re.MULTILINE)


def load_docs(corpus: Path, mb: float, exclude: list[str]) -> dict[str, list[dict]]:
    out = {}
    for path in sorted(corpus.glob("*.parquet")):
        if path.stem in exclude:
            continue
        budget, docs = mb * 1e6, []
        for row in pq.read_table(path, columns=["id", "lang", "text"]).to_pylist():
            if budget <= 0:
                break
            docs.append(row)
            budget -= len(row["text"].encode("utf-8"))
        out[path.stem] = docs
    return out


def run_source(docs: list[dict], cfg) -> dict:
    from data_pipeline.readers import Document
    from data_pipeline.steps import CleanLines, Normalize, utf8_len

    normalize, clean = Normalize(cfg), CleanLines(cfg)
    old_collapse = 0
    for row in docs:
        old_collapse += OLD_COLLAPSE.search(row["text"]) is not None
        doc = Document(id=row["id"], text=row["text"], source="bench", lang=row["lang"])
        size = utf8_len(doc.text)
        for step in (normalize, clean):
            reason, size = step(doc, size)
            if reason is not None:
                break
    return {"normalize": normalize.stats(), "clean_lines": clean.stats(), "old_collapse": old_collapse}


def git_show(commit: str, path: str) -> str:
    return subprocess.run(["git", "show", f"{commit}:{path}"], cwd=REPO, check=True, capture_output=True,
                          text=True).stdout


def baseline_functions(commit: str, workdir: Path):
    """normalize_text, its default config and the per-language line cleaners as of `commit`."""
    package = workdir / "baseline_pipeline"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name in ("config", "normalize", "clean_lines"):
        (package / f"{name}.py").write_text(git_show(commit, f"data_pipeline/{name}.py"))
    sys.path.insert(0, str(workdir))
    config, normalize = (importlib.import_module(f"baseline_pipeline.{m}") for m in ("config", "normalize"))
    clean_lines = importlib.import_module("baseline_pipeline.clean_lines")
    rules = {lang: yaml.safe_load(git_show(commit, f"configs/data/rules/{lang}.yaml"))["clean_lines"]
             for lang in ("en", "zh")}
    cleaners = {lang: clean_lines.LineCleaner(rules[lang]) for lang in rules}
    return normalize.normalize_text, config.NormalizeConfig(), cleaners


def compare(sources: dict[str, list[dict]], commit: str) -> None:
    from data_pipeline.__main__ import load_config
    from data_pipeline.clean_lines import LineCleaner
    from data_pipeline.normalize import Normalizer

    rules = load_config([]).rules
    with tempfile.TemporaryDirectory() as tmp:
        old_normalize, old_cfg, old_cleaners = baseline_functions(commit, Path(tmp))
        versions = {
            commit: (lambda text: old_normalize(text, old_cfg), old_cleaners),
            "now": (lambda text, n=Normalizer(load_config([]).normalize): n(text)[0],
                    {lang: LineCleaner(rules[lang]["clean_lines"]) for lang in ("en", "zh")}),
        }
        print("\n| version | docs changed by normalize | chars it removed | docs changed by clean_lines | "
              "chars it removed | normalize CPU s | clean_lines CPU s |")
        print("|---|---|---|---|---|---|---|")
        for name, (normalize, cleaners) in versions.items():
            n_docs = n_chars = c_docs = c_chars = 0
            n_sec = c_sec = 0.0
            for docs in sources.values():
                for row in docs:
                    start = time.process_time()
                    text = normalize(row["text"])
                    middle = time.process_time()
                    cleaned = cleaners[row["lang"]](text)
                    c_sec += time.process_time() - middle
                    n_sec += middle - start
                    n_docs += text != row["text"]
                    n_chars += len(row["text"]) - len(text)
                    c_docs += cleaned != text
                    c_chars += len(text) - len(cleaned)
            print(f"| {name} | {n_docs} | {n_chars} | {c_docs} | {c_chars} | {n_sec:.2f} | {c_sec:.2f} |")


def fmt(counts: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])) or "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default=str(REPO.parent / "shared" / "corpus"))
    parser.add_argument("--mb", type=float, default=2.0, help="MB of text per source file")
    parser.add_argument("--exclude", nargs="*", default=[])
    parser.add_argument("--baseline", help="a commit whose normalize and clean_lines to compare with")
    args = parser.parse_args()
    from data_pipeline.__main__ import load_config

    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    cfg = load_config([])
    sources = load_docs(Path(args.corpus), args.mb, args.exclude)
    totals = {"docs": 0, "mb": 0.0, "normalize_s": 0.0, "clean_s": 0.0, "old_collapse": 0}
    changes, lines = Counter(), Counter()
    print("| source | docs | normalize: docs changed per reason | clean_lines: lines removed per reason | "
          "docs the old whitespace collapsing rewrote |")
    print("|---|---|---|---|---|")
    start = time.process_time()
    for name, docs in sources.items():
        result = run_source(docs, cfg)
        norm, clean = result["normalize"], result["clean_lines"]
        print(f"| {name} | {len(docs)} | {fmt(norm['changes'])} | {fmt(clean['lines_removed'])} | "
              f"{result['old_collapse']} ({result['old_collapse'] / max(len(docs), 1):.0%}) |")
        totals["docs"] += len(docs)
        totals["mb"] += norm["bytes_in"] / 1e6
        totals["normalize_s"] += norm["seconds"]
        totals["clean_s"] += clean["seconds"]
        totals["old_collapse"] += result["old_collapse"]
        changes.update(norm["changes"])
        lines.update(clean["lines_removed"])
    print(f"\n{totals['docs']} docs, {totals['mb']:.1f} MB, {time.process_time() - start:.1f} CPU s in all")
    print(f"normalize changes (docs): {fmt(changes)}")
    print(f"clean_lines lines removed: {fmt(lines)}")
    print(f"old default would have rewritten whitespace in {totals['old_collapse']} docs "
          f"({totals['old_collapse'] / max(totals['docs'], 1):.1%})")
    for stage, key in (("normalize", "normalize_s"), ("clean_lines", "clean_s")):
        print(f"{stage:12s} {totals[key]:7.2f} s  {totals['mb'] / totals[key]:7.1f} MB/s  "
              f"{totals['docs'] / totals[key]:9.0f} docs/s (one core, wall time inside the stage)")
    if args.baseline:
        compare(sources, args.baseline)


if __name__ == "__main__":
    main()
