"""Deduplication stages: exact, near-duplicate (MinHash-LSH), line/sentence level, semantic
(embeddings + k-means) and cluster balancing.

Each stage is `run(input_dir, output_dir, cfg, workers, executor, ray_address) -> stats` over a
complete shard directory; see `common.py` for the output layout.
"""
from . import balance, exact, lines, minhash, semantic

GLOBAL_STAGES = {
    "exact_dedup": exact.run,
    "minhash_dedup": minhash.run,
    "line_dedup": lines.run,
    "semantic_dedup": semantic.run,
    "cluster_balance": balance.run,
}

__all__ = ["GLOBAL_STAGES"]
