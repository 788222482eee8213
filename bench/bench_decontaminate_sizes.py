"""What decontamination's short-field rule (decontaminate.min_ngram) costs and finds on real text.

    python bench/bench_decontaminate_sizes.py [--corpus ../shared/corpus] [--docs 150] [--items 2000]

Takes the first --docs documents of each Parquet file of the corpus and a made-up evaluation set
of --items MMLU-shaped items cut from them (a 20-word `question` and one 8-12-word `choice`), and
prints docs/s (CPU) and documents hit with 13-grams only (min_ngram=13) and with short fields
matched whole (min_ngram=8: documents are hashed at every size 8-13 the items need).
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    from data_pipeline.config import DecontaminateConfig
    from data_pipeline.decontaminate import Decontaminator

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default=str(REPO.parent / "shared" / "corpus"))
    parser.add_argument("--docs", type=int, default=150)
    parser.add_argument("--items", type=int, default=2000)
    args = parser.parse_args()
    docs = [r["text"] for f in sorted(Path(args.corpus).glob("*.parquet"))
            for r in pq.read_table(f, columns=["text"]).slice(0, args.docs).to_pylist()]
    rng, rows = random.Random(0), []
    for text in rng.sample(docs, min(args.items, len(docs))):
        words = text.split()
        if len(words) > 32:
            start = rng.randrange(len(words) - 32)
            rows.append({"question": " ".join(words[start:start + 20]),
                         "choices": [" ".join(words[start + 20:start + 20 + rng.randint(8, 12)])]})
    with tempfile.TemporaryDirectory() as tmp:
        evals = Path(tmp) / "eval.jsonl"
        evals.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        for min_ngram in (13, 8):
            matcher = Decontaminator(DecontaminateConfig(eval_sets={"made_up": [str(evals)]}, min_ngram=min_ngram))
            started = time.process_time()
            hit = sum(bool(matcher.hits(text)) for text in docs)
            cpu = time.process_time() - started
            print(f"min_ngram {min_ngram:2d}: sizes {matcher.sizes}, {len(docs)} documents, {len(rows)} items, "
                  f"{len(docs) / cpu:,.0f} docs/s, {hit} documents hit")


if __name__ == "__main__":
    main()
