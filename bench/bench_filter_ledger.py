"""Both sides of the filter ledger: good text kept, junk removed (prints tables; asserts nothing).

    .venv/bin/python bench/bench_filter_ledger.py [--corpus ../shared/corpus] [--mb-per-source 2] \
        [--site-packages .venv/lib/python3.11/site-packages] [--json out.json]

Runs the per-document stages of the default pipeline config (normalize, annotate, clean_lines,
filter; dedup is left out: removing a real duplicate is not a loss) in this process on:

* good text, labelled by where it comes from, not by anything the filters compute:
  - every curated source of ../shared/corpus (documentation, news, literature, reviews, quotes),
    up to --mb-per-source MB each (whole documents, taken in file order);
  - real source files of installed packages (.py, .c/.h/.cpp, .cuh), hand-written code;
* junk:
  - the generated spam pages of stack_common.sample_corpus's raw-web layer;
  - real files that are not prose or hand-written code, taken from installed packages: minified
    JavaScript bundles, protobuf-generated Python (`*_pb2.py`) and data files (CSV, JSON SBOMs).
    (Licence texts are not junk for the filters: they are real prose, and exact dedup removes
    their thousands of copies.)

Per source: bytes in, share of bytes kept, and the reasons that removed the most bytes.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from data_pipeline.__main__ import load_config  # noqa: E402
from data_pipeline.readers import Document  # noqa: E402
from data_pipeline.steps import build_steps, utf8_len  # noqa: E402
from stack_common.sample_corpus import raw_records  # noqa: E402

KINDS = {  # corpus file stem -> kind of text (from the corpus README)
    "linux-doc": "documentation", "python-doc": "documentation", "perl-doc": "documentation",
    "shakespeare": "literature", "fortunes": "quotes", "fortunes-zh": "literature (poems, quotes)",
    "peoplesdaily1998-zh": "news", "product-reviews-zh": "reviews", "jargon": "documentation",
}
CODE_GLOBS = ["*.py", "*.c", "*.h", "*.cpp", "*.cuh"]
CODE_PACKAGES = ["torch/nn", "torch/optim", "numpy/lib", "pyarrow", "megatron/core/transformer", "datasketch",
                 "transformers/models/llama", "sentencepiece", "omegaconf", "hydra", "torch/include/c10/util",
                 "torch/include/ATen/native/cuda", "setuptools", "pip/_internal", "tqdm"]


def corpus_docs(corpus: Path, mb: float) -> list[Document]:
    docs = []
    for path in sorted(corpus.glob("*.parquet")):
        budget = mb * 1e6
        table = pq.read_table(path, columns=["id", "text"])
        for doc_id, text in zip(table["id"].to_pylist(), table["text"].to_pylist()):
            if budget <= 0:
                break
            budget -= len(text.encode("utf-8"))
            docs.append(Document(id=doc_id, text=text, source=path.stem))
    return docs


def read_files(paths, source: str, limit_bytes: float) -> list[Document]:
    docs = []
    for path in paths:
        if limit_bytes <= 0:
            break
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if text.strip():
            docs.append(Document(id=str(path), text=text, source=source))
            limit_bytes -= len(text.encode("utf-8"))
    return docs


def code_docs(site: Path, mb: float) -> list[Document]:
    paths = [p for pkg in CODE_PACKAGES for pattern in CODE_GLOBS for p in sorted((site / pkg).rglob(pattern))
             if not p.name.endswith("_pb2.py")]
    return read_files(paths, "code:site-packages", mb * 1e6)


def junk_docs(site: Path) -> list[Document]:
    spam = [Document(id=r["id"], text=r["text"], source="junk:generated-spam")
            for r in raw_records() if r["meta"]["kind"] == "spam"]
    minified = sorted(site.rglob("*.chunk.js")) + sorted(site.rglob("*.min.js")) + sorted(site.rglob("*_binary.js"))
    return (spam + read_files(minified, "junk:minified-js", 4e6)
            + read_files(sorted(site.rglob("*_pb2.py")), "junk:generated-pb2", 2e6)
            + read_files(sorted(site.rglob("*.csv")) + sorted(site.rglob("*.cdx.json")) +
                         sorted(site.rglob("*.cyclonedx.json")), "junk:data-files", 2e6))


def run_steps(docs: list[Document]) -> dict:
    cfg = load_config([])
    steps = build_steps(["normalize", "annotate", "clean_lines", "filter"], cfg)
    per_source: dict = defaultdict(lambda: {"docs": 0, "bytes_in": 0, "bytes_kept": 0, "docs_kept": 0,
                                            "removed_bytes": Counter(), "langs": Counter()})
    start = time.perf_counter()
    for doc in docs:
        size = utf8_len(doc.text)
        row = per_source[doc.source]
        row["docs"] += 1
        row["bytes_in"] += size
        original = size
        for step in steps:
            reason, size = step(doc, size)
            if reason is not None:
                row["removed_bytes"][f"{step.name}:{reason}"] += original
                break
        else:
            row["bytes_kept"] += size
            row["docs_kept"] += 1
        row["langs"][doc.lang or "?"] += 1
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "sources": per_source}


def print_table(title: str, sources: dict) -> None:
    print(f"\n{title}")
    print("| source | kind | docs | MB in | bytes kept | docs kept | langs | main reasons (MB removed) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, row in sorted(sources.items()):
        kept = row["bytes_kept"] / (row["bytes_in"] or 1)
        reasons = ", ".join(f"`{r}` {b / 1e6:.2f}" for r, b in row["removed_bytes"].most_common(3))
        langs = " ".join(f"{k}:{v}" for k, v in row["langs"].most_common(3))
        print(f"| {name} | {KINDS.get(name, 'documentation' if not name.startswith(('code', 'junk')) else name.split(':')[0])}"
              f" | {row['docs']} | {row['bytes_in'] / 1e6:.2f} | {kept:.0%} | {row['docs_kept']}/{row['docs']} | {langs}"
              f" | {reasons or '-'} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=REPO.parent / "shared" / "corpus")
    ap.add_argument("--mb-per-source", type=float, default=2.0)
    ap.add_argument("--code-mb", type=float, default=6.0)
    ap.add_argument("--site-packages", type=Path,
                    default=REPO / ".venv" / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    good = corpus_docs(args.corpus, args.mb_per_source) + code_docs(args.site_packages, args.code_mb)
    junk = junk_docs(args.site_packages)
    good_run, junk_run = run_steps(good), run_steps(junk)
    print_table("Good text: share of bytes kept", good_run["sources"])
    print_table("Junk: share of bytes kept (lower is better)", junk_run["sources"])
    total = {side: (sum(r["bytes_kept"] for r in run["sources"].values()),
                    sum(r["bytes_in"] for r in run["sources"].values())) for side, run in (("good", good_run), ("junk", junk_run))}
    print(f"\ngood text kept: {total['good'][0] / total['good'][1]:.1%} of {total['good'][1] / 1e6:.1f} MB; "
          f"junk removed: {1 - total['junk'][0] / total['junk'][1]:.1%} of {total['junk'][1] / 1e6:.1f} MB; "
          f"{(total['good'][1] + total['junk'][1]) / 1e6 / (good_run['seconds'] + junk_run['seconds']):.2f} MB/s")
    if args.json:
        plain = {side: {k: {**v, "removed_bytes": dict(v["removed_bytes"]), "langs": dict(v["langs"])}
                        for k, v in run["sources"].items()} for side, run in (("good", good_run), ("junk", junk_run))}
        args.json.write_text(json.dumps(plain, indent=1))


if __name__ == "__main__":
    main()
