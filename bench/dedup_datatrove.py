"""datatrove's 4-stage MinHash dedup on the benchmark, run in datatrove's own venv.

    /work/venvs/datatrove/bin/python bench/dedup_datatrove.py IN_DIR WORK_DIR --workers 2
IN_DIR holds <lang>-NNN.jsonl files (id, text): en, and zh for Chinese and mixed zh + Latin documents
(datatrove's `cmn` word tokenizer). Each language is deduplicated on its own with datatrove's 5-gram
word shingles. Prints one JSON line: seconds per language and stage, and for every document in a
cluster its id, cluster id and whether it was removed.
"""
import argparse
import glob
import gzip
import json
import os
import time

from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.dedup.minhash import (MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster,
                                              MinhashDedupFilter, MinhashDedupSignature)
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter
from datatrove.utils.typeshelper import Languages

LANGS = {"en": Languages.english, "zh": Languages.mandarin_chinese}


def run_language(lang, in_dir, work, workers, config):
    files = sorted(glob.glob(os.path.join(in_dir, f"{lang}-*.jsonl")))
    tasks = len(files)
    reader = lambda: JsonlReader(in_dir, glob_pattern=f"{lang}-*.jsonl", id_key="id", text_key="text")  # noqa
    w = os.path.join(work, lang)
    stages = {
        "signatures": LocalPipelineExecutor(pipeline=[reader(), MinhashDedupSignature(
            output_folder=f"{w}/sigs", config=config, language=LANGS[lang])], tasks=tasks, workers=workers,
            logging_dir=f"{w}/logs/s1"),
        "buckets": LocalPipelineExecutor(pipeline=[MinhashDedupBuckets(
            input_folder=f"{w}/sigs", output_folder=f"{w}/buckets", config=config)],
            tasks=config.num_buckets, workers=workers, logging_dir=f"{w}/logs/s2"),
        "cluster": LocalPipelineExecutor(pipeline=[MinhashDedupCluster(
            input_folder=f"{w}/buckets", output_folder=f"{w}/remove", config=config, save_cluster_id=True)],
            tasks=1, logging_dir=f"{w}/logs/s3"),
        "filter": LocalPipelineExecutor(pipeline=[reader(), MinhashDedupFilter(
            input_folder=f"{w}/remove", load_cluster_ids=True,
            exclusion_writer=JsonlWriter(f"{w}/removed")), JsonlWriter(f"{w}/kept")],
            tasks=tasks, workers=workers, logging_dir=f"{w}/logs/s4"),
    }
    seconds = {}
    for name, executor in stages.items():
        t = time.time()
        executor.run()
        seconds[name] = round(time.time() - t, 2)
    members = []
    for kind in ("kept", "removed"):
        for path in sorted(glob.glob(f"{w}/{kind}/*")):
            with gzip.open(path, "rt") as fh:
                for line in fh:
                    doc = json.loads(line)
                    cluster = doc["metadata"].get("minhash_cluster_id", -1)
                    if cluster != -1:
                        members.append([doc["id"], f"{lang}-{cluster}", kind == "removed"])
    return seconds, members


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("in_dir")
    ap.add_argument("work")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--buckets", type=int, default=14)
    ap.add_argument("--rows", type=int, default=8)
    args = ap.parse_args()
    config = MinhashConfig(n_grams=5, num_buckets=args.buckets, hashes_per_bucket=args.rows)
    out = {"seconds": {}, "members": []}
    for lang in LANGS:
        seconds, members = run_language(lang, args.in_dir, args.work, args.workers, config)
        out["seconds"][lang] = seconds
        out["members"] += members
    print(json.dumps(out))
