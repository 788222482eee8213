"""Deduplication stages: exact, near-duplicate (MinHash-LSH) and line/sentence level.

Each stage is `run(input_dir, output_dir, cfg, workers, executor, ray_address) -> stats` over a
complete shard directory; see `common.py` for the output layout.
"""
from . import exact, lines, minhash

GLOBAL_STAGES = {
    "exact_dedup": exact.run,
    "minhash_dedup": minhash.run,
    "line_dedup": lines.run,
}

__all__ = ["GLOBAL_STAGES"]
