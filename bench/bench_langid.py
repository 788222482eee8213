"""Language-ID accuracy per language and cost: the old script heuristic vs the default model.

Ground truth is where each text was published, never a detector's output (see
tests/data/langid/README.md): UDHR translations in 22 languages (a paragraph and a sentence of
each article), PostgreSQL 15 message strings in 10 languages (short, technical, some Japanese
written almost only in kanji), plus, when present, Chinese manual pages with commands and
options from ../shared/corpus (manpages-zh/-zhtw, Han ratio 0.1-0.3), and Python files of the
standard library (code).

    python bench/bench_langid.py                      # script heuristic vs cld2
    python bench/bench_langid.py --fasttext-model lid.176.ftz   # adds a fastText column

Prints one table: accuracy per language and kind, then docs per CPU-second and load time of each detector
(docs per CPU-second also on a realistic mix: ../shared/corpus when present, else the bundled sample).
"""
from __future__ import annotations

import argparse
import json
import sys
import sysconfig
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pyarrow.parquet as pq  # noqa: E402

from data_pipeline.config import LangConfig  # noqa: E402
from data_pipeline.lang import annotate_language, build_detector  # noqa: E402

LABELLED = REPO / "bench" / "data" / "langid" / "labelled.jsonl"
SHARED = REPO.parent / "shared" / "corpus"
SAMPLE = REPO / "data" / "sample"


def labelled_set(code_files: int) -> list[dict]:
    rows = [json.loads(line) for line in LABELLED.read_text(encoding="utf-8").splitlines()]
    for name in ("manpages-zh", "manpages-zhtw"):
        path = SHARED / f"{name}.parquet"
        if path.is_file():
            for doc in pq.read_table(path, columns=["text", "han_ratio"]).to_pylist():
                if 0.1 <= doc["han_ratio"] < 0.3:
                    rows.append({"lang": "zh", "variant": "zh manual+Latin", "kind": "doc", "text": doc["text"]})
    stdlib = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    for path in stdlib[::max(1, len(stdlib) // code_files)][:code_files]:
        rows.append({"lang": "code", "variant": "code (stdlib .py)", "kind": "file",
                     "text": path.read_text(encoding="utf-8", errors="replace")})
    return rows


def throughput_docs() -> tuple[str, list[str]]:
    """Realistic documents for docs/s: ../shared/corpus (a slice of each file) or the bundled sample."""
    if SHARED.is_dir():
        texts = []
        for path in sorted(SHARED.glob("*.parquet")):
            texts += pq.read_table(path, columns=["text"]).column("text").to_pylist()[:150]
        return f"../shared/corpus, first 150 docs of each file ({len(texts)})", texts
    texts = [t for lang in ("en", "zh", "code")
             for t in pq.read_table(SAMPLE / f"{lang}.parquet").column("text").to_pylist()]
    return f"data/sample, {len(texts)} docs", texts


def old_heuristic(lang: str) -> str:
    """What lang.py said before the model: the script statistics had no ja / ko (kana or hangul -> other)."""
    return "other" if lang in ("ja", "ko") else lang


def detectors(fasttext_model: str | None) -> list[tuple[str, LangConfig, object, float, Callable]]:
    out = []
    specs = [("old script heuristic", LangConfig(model="script"), old_heuristic),
             ("cld2 (default)", LangConfig(), None)]
    if fasttext_model:
        specs.append((f"fasttext {Path(fasttext_model).name}",
                      LangConfig(model="fasttext", fasttext_model=fasttext_model), None))
    for name, cfg, post in specs:
        start = time.perf_counter()
        detector = build_detector(cfg)
        if detector is not None:
            detector("warm up: load the model")
        out.append((name, cfg, detector, time.perf_counter() - start, post or (lambda lang: lang)))
    return out


def label_all(texts: list[str], cfg: LangConfig, detector, post) -> tuple[list[str], float]:
    """Labels and the CPU seconds they took (CPU time: the machine is shared, wall time drifts)."""
    start = time.process_time()
    labels = [post(annotate_language(text, cfg, detector)[0]) for text in texts]
    return labels, time.process_time() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fasttext-model", help="a fastText LID file (lid.176.bin/.ftz) to compare")
    parser.add_argument("--code-files", type=int, default=60, help="standard-library .py files labelled code")
    parser.add_argument("--repeat", type=int, default=3, help="passes over the throughput mix (best one counts)")
    args = parser.parse_args()
    rows = labelled_set(args.code_files)
    texts = [r["text"] for r in rows]
    mix_name, mix = throughput_docs()
    groups = defaultdict(list)
    for i, r in enumerate(rows):
        kind = r["kind"] if r["kind"] in ("sentence", "paragraph") else ""
        groups[(r["variant"], kind)].append(i)
    specs = detectors(args.fasttext_model)
    passes = [label_all(texts, cfg, detector, post) for _, cfg, detector, _, post in specs]
    # The machine is shared: detectors take turns, and the fastest of --repeat passes counts.
    mix_seconds = [float("inf")] * len(specs)
    for _ in range(args.repeat):
        for j, (_, cfg, detector, _, post) in enumerate(specs):
            mix_seconds[j] = min(mix_seconds[j], label_all(mix, cfg, detector, post)[1])
    results = [(name, labels, load_s, len(texts) / seconds, len(mix) / mix_s)
               for (name, _, _, load_s, _), (labels, seconds), mix_s in zip(specs, passes, mix_seconds)]
    print_table(rows, groups, results, mix_name)
    return 0


def print_table(rows, groups, results, mix_name) -> None:
    width = max(len(name) for name, *_ in results) + 2
    header = f"{'language / kind':<30}{'n':>5}" + "".join(f"{name:>{width}}" for name, *_ in results)
    print(header)
    print("-" * len(header))
    total = [0] * len(results)
    for (variant, kind), idx in sorted(groups.items()):
        cells = []
        for j, (_, labels, *_rest) in enumerate(results):
            right = sum(labels[i] == rows[i]["lang"] for i in idx)
            total[j] += right
            cells.append(f"{right / len(idx):>{width}.3f}")
        print(f"{variant + (' ' + kind if kind else ''):<30}{len(idx):>5}" + "".join(cells))
    print("-" * len(header))
    print(f"{'all (micro)':<30}{len(rows):>5}" + "".join(f"{t / len(rows):>{width}.3f}" for t in total))
    wrong_en = [sum(label == "en" and row["lang"] != "en" for label, row in zip(r[1], rows)) for r in results]
    print(f"{'labelled en, not English':<35}" + "".join(f"{n:>{width}}" for n in wrong_en))
    print(f"{'docs per CPU-s, labelled set':<35}" + "".join(f"{r[3]:>{width},.0f}" for r in results))
    print(f"{'docs per CPU-s, document mix *':<35}" + "".join(f"{r[4]:>{width},.0f}" for r in results))
    print(f"{'model load + first call, s':<35}" + "".join(f"{r[2]:>{width}.3f}" for r in results))
    print(f"* {mix_name}; annotate_language() as the pipeline calls it (script statistics included)")


if __name__ == "__main__":
    sys.exit(main())
