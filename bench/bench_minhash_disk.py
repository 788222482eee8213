"""Disk and CPU of `minhash_dedup` run by the pipeline, for one or more checkouts of the code.

    python -m data_pipeline input=/work/scale/corpus-100000/docs output=/tmp/d1run workers=2 \
        'stages=[normalize,annotate,clean_lines,filter,exact_dedup]'
    git archive d32d3d4 | tar -x -C /tmp/ref      # shingles of every document, work/ kept
    python bench/bench_minhash_disk.py /tmp/d1run/stages/04_exact_dedup/kept --code . /tmp/ref

Per checkout, `python -m data_pipeline input=SHARDS stages=[minhash_dedup] workers=N` in a fresh
output directory (extra arguments after `--` are overrides, e.g. `-- dedup.keep_work=true`):
CPU seconds of the process tree, wall, the peak size of the stage's work/ and of work/shingles
(polled every 0.2 s), work/ and the stage directory after the run, candidate documents, and whether
kept/ and excluded/ are byte-identical to the first checkout's (manifest sha256).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scale import dir_bytes  # noqa: E402


def measure(code: Path, shards: Path, out: Path, workers: int, overrides: list[str]) -> dict:
    peak = {"work": 0, "shingles": 0}
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(0.2):
            for work in out.glob("stages/*/work"):
                peak["work"] = max(peak["work"], dir_bytes(work))
                peak["shingles"] = max(peak["shingles"], dir_bytes(work / "shingles"))

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    env = dict(os.environ, PYTHONPATH=str(code), BC_NO_PROGRESS="1")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    subprocess.run([sys.executable, "-m", "data_pipeline", f"input={shards}", f"output={out}", f"workers={workers}",
                    "stages=[minhash_dedup]", *overrides], cwd=code, env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.time() - t0
    stop.set()
    poller.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    stage = next(out.glob("stages/*minhash_dedup"))
    stats = json.loads((stage / "stats.json").read_text())
    outputs = {sub: [f["sha256"] for f in json.loads((stage / sub / "manifest.json").read_text())["files"]]
               for sub in ("kept", "excluded")}
    return {"cpu_s": after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, "wall_s": wall,
            "peak_work": peak["work"], "peak_shingles": peak["shingles"], "work_after": dir_bytes(stage / "work"),
            "stage_after": dir_bytes(stage), "docs_in": stats["docs_in"], "candidate_docs": stats.get("candidate_docs"),
            "removed": stats["docs_in"] - stats["docs_out"], "outputs": outputs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("shards", type=Path, help="a shard directory (e.g. an exact_dedup stage's kept/)")
    ap.add_argument("--code", type=Path, nargs="+", default=[Path(".")], help="checkouts to run, in turn")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("overrides", nargs="*", help="`python -m data_pipeline` overrides (after --)")
    args = ap.parse_args()
    mb = lambda b: f"{b / 1e6:,.0f}"  # noqa: E731
    print(f"{'code':<24} {'CPU s':>6} {'wall s':>6} {'peak work MB':>12} {'peak shingles MB':>16} "
          f"{'work after MB':>13} {'stage dir after MB':>18} {'candidates':>14} {'removed':>7}  same output")
    first = None
    for code in args.code:
        with tempfile.TemporaryDirectory(prefix="minhash-disk-") as tmp:
            r = measure(code.resolve(), args.shards.resolve(), Path(tmp) / "out", args.workers, args.overrides)
        first = first or r["outputs"]
        n = r["candidate_docs"]
        cand = "-" if n is None else f"{n:,} ({n / r['docs_in']:.1%})"
        print(f"{str(code)[-24:]:<24} {r['cpu_s']:>6.1f} {r['wall_s']:>6.1f} {mb(r['peak_work']):>12} "
              f"{mb(r['peak_shingles']):>16} {mb(r['work_after']):>13} {mb(r['stage_after']):>18} {cand:>14} "
              f"{r['removed']:>7}  {r['outputs'] == first}", flush=True)


if __name__ == "__main__":
    main()
