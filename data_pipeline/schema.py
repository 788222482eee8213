"""The fixed schemas of the data pipeline's shards (kept, excluded, quarantined)."""
from __future__ import annotations

import pyarrow as pa

# Kept documents. `annotations` is a JSON object as text (stage-specific facts, e.g. script
# ratios, dedup cluster ids); JSON keeps the schema fixed while stages add keys.
DOC_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("text", pa.string()),
    ("lang", pa.string()),
    ("source", pa.string()),
    ("quality_score", pa.float32()),
    ("annotations", pa.string()),
])

# Documents a stage removed: the document plus which stage removed it and why.
EXCLUDED_SCHEMA = DOC_SCHEMA.append(pa.field("stage", pa.string())).append(pa.field("reason", pa.string()))

# Records that could not be read as documents at all.
QUARANTINE_SCHEMA = pa.schema([
    ("file", pa.string()),
    ("location", pa.string()),   # "line 17" or "row 3"
    ("reason", pa.string()),
    ("raw", pa.binary()),        # the record's bytes as read (truncated to 64 KiB)
])
