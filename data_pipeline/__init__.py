"""Raw documents -> clean Arrow shards: readers, normalization, language annotation, heuristic
filters (English and Chinese), line cleaning, fastText quality model, dedup (`dedup/`), local and
Ray executors. Run it as `python -m data_pipeline` (see README.md)."""
