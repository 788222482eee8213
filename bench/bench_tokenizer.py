"""Tokenizer benchmark on ../shared/corpus (~110 MB of real zh/en text). Prints figures.

1. The full Baichuan 2 tokenizer (125,696 pieces) trained by SentencePiece on the whole corpus,
   and Hugging Face `tokenizers`' BPE trainer at the same vocabulary on the same sample text,
   side by side: wall time and peak RSS of each trainer process.
2. `encode` throughput (MB of text per second) with 1 and 2 workers.
3. The evaluation report of both tokenizers on held-out documents.

    .venv/bin/python bench/bench_tokenizer.py [--corpus ../shared/corpus] [--out bench_out/tokenizer]
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("BC_NO_PROGRESS", "1")

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from data_pipeline.schema import DOC_SCHEMA  # noqa: E402
from stack_common.shards import write_table  # noqa: E402

HF_TRAINER = textwrap.dedent("""
    import json, sys, time
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    text_path, out_path, vocab_size, specials = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    # The closest HF equivalent of the SentencePiece settings: spaces as "▁", no dummy prefix,
    # digits split one by one; byte fallback covers what the alphabet misses.
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Metaspace(prepend_scheme="never", split=True),
                                                 pre_tokenizers.Digits(individual_digits=True)])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    byte_pieces = [f"<0x{i:02X}>" for i in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials + byte_pieces,
                                  max_token_length=32, limit_alphabet=20000, show_progress=False)
    start = time.perf_counter()
    tok.train([text_path], trainer)
    print(json.dumps({"seconds": time.perf_counter() - start, "vocab": tok.get_vocab_size()}))
    tok.save(out_path)
""")


def build_shards(corpus: Path, out: Path) -> Path:
    """One shard dir per corpus file, in the pipeline's DOC_SCHEMA (zh-TW counts as zh)."""
    marker = out.with_name(out.name + ".done")
    if marker.is_file():
        return out
    shutil.rmtree(out, ignore_errors=True)
    for path in sorted(corpus.glob("*.parquet")):
        t = pq.read_table(path, columns=["id", "source", "lang", "text"])
        n = t.num_rows
        lang = ["zh" if str(x).startswith("zh") else "en" for x in t.column("lang").to_pylist()]
        table = pa.table({"id": t["id"], "text": t["text"], "lang": lang, "source": t["source"],
                          "quality_score": pa.array([1.0] * n, pa.float32()), "annotations": ["{}"] * n},
                         schema=DOC_SCHEMA)
        write_table(out / path.stem, table, target_bytes=32 << 20)
    marker.write_text("ok\n")
    return out


def run_child(cmd: list[str]) -> tuple[float, int, str, float]:
    """Wall seconds, peak RSS bytes, stdout and CPU seconds (with its waited-for workers) of a child."""
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            err.seek(0)
            raise SystemExit(f"child failed: {cmd[:5]}\n{err.read()[-2000:]}")
    return time.perf_counter() - start, usage.ru_maxrss * 1024, out, usage.ru_utime + usage.ru_stime


def bench_training(shards: Path, work: Path) -> dict:
    from tokenizer_training.__main__ import load_config
    from tokenizer_training.config import control_symbol_names
    from tokenizer_training.train import train

    tok_dir = work / "tok125k"
    cfg = load_config([f"input=[{shards}/*]", f"out={tok_dir}", "overwrite=true", "sample.holdout_fraction=0.01"])
    start = time.perf_counter()
    summary = train(cfg)
    total = time.perf_counter() - start
    sp = {"wall_s": summary["sentencepiece_seconds"], "peak_rss_gb": summary["sentencepiece_peak_rss_bytes"] / 2 ** 30,
          "train_command_wall_s": total, "sample_mb": summary["sample"]["kept_bytes"] / 1e6,
          "lowest_merge_frequency": summary["lowest_merge_frequency"]}

    # The same sample text for the HF trainer: rebuild it with the same seed (train deletes its copy).
    from tokenizer_training.sample import plan_keep_rates, survey, write_sample
    from tokenizer_training.sources import resolve_inputs, shard_files
    files = shard_files(resolve_inputs([f"{shards}/*"]), ["id", "text", "lang", "source"])
    stats = survey(files, cfg.sample)
    stats.keep_rate = plan_keep_rates(stats, cfg.sample)
    text = work / "sample.txt"
    write_sample(files, cfg.sample, stats, text, work / "heldout_again", cfg.tokenizer.max_sentence_length)
    shutil.rmtree(work / "heldout_again")
    specials = ["<unk>", "<s>", "</s>", *control_symbol_names(cfg.tokenizer)]
    hf_json = work / "hf_bpe_tokenizer.json"
    wall, rss, out, _ = run_child([sys.executable, "-c", HF_TRAINER, str(text), str(hf_json),
                                str(cfg.tokenizer.vocab_size), json.dumps(specials)])
    hf = {"wall_s": wall, "peak_rss_gb": rss / 2 ** 30, **json.loads(out)}
    text.unlink()
    return {"sentencepiece": sp, "hf_tokenizers_bpe": hf, "speedup": hf["wall_s"] / sp["wall_s"],
            "model": str(tok_dir / "tokenizer.model"), "hf_json": str(hf_json), "heldout": str(tok_dir / "heldout")}


def bench_encode(model: str, shards: Path, work: Path, pattern: str = "*") -> dict:
    figures = {}
    for workers in (1, 2):
        out = work / f"encode_w{workers}"
        shutil.rmtree(out, ignore_errors=True)
        cmd = [sys.executable, "-m", "tokenizer_training", "encode", f"model_file={model}", f"input=[{shards}/{pattern}]",
               f"out={out}", f"encode.workers={workers}"]
        load = os.getloadavg()[0]
        wall, rss, _, cpu = run_child(cmd)
        summary = json.loads((out / "encode_summary.json").read_text())
        figures[workers] = {"mb_per_s": summary["text_bytes"] / 1e6 / summary["seconds"],
                            "mb_per_cpu_s": summary["text_bytes"] / 1e6 / cpu, "load_avg_1min": load,
                            "mb_per_s_incl_startup": summary["text_bytes"] / 1e6 / wall, "seconds": summary["seconds"],
                            "text_mb": summary["text_bytes"] / 1e6, "tokens": summary["tokens"],
                            "outputs": {k: v["tokens"] for k, v in summary["outputs"].items()}}
        shutil.rmtree(out)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default=str(REPO.parent / "shared" / "corpus"))
    parser.add_argument("--out", default=str(REPO / "bench_out" / "tokenizer"))
    parser.add_argument("--skip-train", action="store_true", help="reuse OUT/tok125k from an earlier run")
    parser.add_argument("--encode-input", default="*", help="glob of shard dirs (under OUT/shards) to encode")
    args = parser.parse_args()
    corpus, work = Path(args.corpus), Path(args.out)
    if not glob.glob(str(corpus / "*.parquet")):
        raise SystemExit(f"no *.parquet in {corpus}")
    work.mkdir(parents=True, exist_ok=True)
    shards = build_shards(corpus, work / "shards")
    results_path = work / "bench_results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    if not args.skip_train:
        results["train"] = train_res = bench_training(shards, work)
        print(f"train 125,696 pieces on {train_res['sentencepiece']['sample_mb']:.1f} MB:")
        for name in ("sentencepiece", "hf_tokenizers_bpe"):
            r = train_res[name]
            print(f"  {name:18s} wall {r['wall_s']:7.1f} s   peak RSS {r['peak_rss_gb']:.2f} GB")
        print(f"  SentencePiece is {train_res['speedup']:.2f}x faster; lowest merge frequency "
              f"{train_res['sentencepiece']['lowest_merge_frequency']}; whole train command "
              f"{train_res['sentencepiece']['train_command_wall_s']:.1f} s")
    model = str(work / "tok125k" / "tokenizer.model")
    results["encode"] = enc = bench_encode(model, shards, work, args.encode_input)
    for workers, r in enc.items():
        print(f"encode {workers} worker(s): {r['mb_per_s']:.2f} MB/s ({r['text_mb']:.1f} MB, {r['tokens']} tokens, "
              f"{r['seconds']:.1f} s; {r['mb_per_s_incl_startup']:.2f} MB/s with process start-up; "
              f"{r['mb_per_cpu_s']:.2f} MB per CPU-second; load average {r['load_avg_1min']:.1f} on {os.cpu_count()} cores)")
    if (work / "hf_bpe_tokenizer.json").is_file():
        from tokenizer_training.evaluate import evaluate, render_markdown
        report = evaluate([model, str(work / "hf_bpe_tokenizer.json")], [str(work / "tok125k" / "heldout")], 2000)
        results["evaluate"] = report
        print(render_markdown(report))
    results_path.write_text(json.dumps(results, indent=1, ensure_ascii=False))
    print(f"figures: {results_path}")


if __name__ == "__main__":
    main()
