"""One unit of work: one input file, or a part of one (input_split), through the fused per-document
stages of a segment.

The unit's results (kept, excluded per stage, quarantine, stats.json) are built in a temporary
directory renamed into place when complete, so a killed worker leaves nothing that counts and
the unit is simply redone. The output depends only on the input file and the config, never on
which worker ran it or when.
"""
from __future__ import annotations

import json
from collections import Counter

from stack_common.atomic import atomic_dir, atomic_write_json
from stack_common.shards import ArrowWriter
from stack_common.storage import public_uri

from .config import PipelineConfig
from .input_split import FilePart
from .readers import BadRecord, read_unit
from .schema import DOC_SCHEMA, EXCLUDED_SCHEMA, QUARANTINE_SCHEMA
from .steps import build_steps, utf8_len


def doc_row(doc) -> dict:
    return {"id": doc.id, "text": doc.text, "lang": doc.lang or "other", "source": doc.source,
            "quality_score": doc.quality_score, "annotations": json.dumps(doc.annotations, ensure_ascii=False, sort_keys=True)}


def process_unit(path: str, out_dir: str, stage_names: list[str], cfg: PipelineConfig,
                 id_name: str | None = None, part: FilePart | None = None) -> dict:
    steps = build_steps(stage_names, cfg)
    shown = public_uri(path)      # no user:password@ or query in what is written
    options = dict(prefix="part", batch_rows=cfg.reader.batch_docs, compression=cfg.shards.codec())
    quarantine_reasons: Counter = Counter()
    with atomic_dir(out_dir, overwrite=True) as tmp:
        kept = ArrowWriter(tmp / "kept", DOC_SCHEMA, **options)
        excluded = {s.name: ArrowWriter(tmp / "excluded" / s.name, EXCLUDED_SCHEMA, **options) for s in steps}
        quarantine = ArrowWriter(tmp / "quarantine", QUARANTINE_SCHEMA, **options)
        writers = [kept, quarantine, *excluded.values()]
        try:
            for record in read_unit(path, cfg.reader, id_name, part):
                if isinstance(record, BadRecord):
                    quarantine.add(record.row())
                    quarantine_reasons[record.reason.split(":")[0]] += 1
                    continue
                size = utf8_len(record.text)
                for step in steps:
                    try:
                        reason, size = step(record, size)
                    except Exception as err:   # a bug, not bad data: stop, and say where
                        raise RuntimeError(f"{shown}: document {record.id!r}: stage {step.name} failed: {err!r}") from err
                    if reason is not None:
                        excluded[step.name].add({**doc_row(record), "stage": step.name, "reason": reason})
                        break
                else:
                    kept.add(doc_row(record))
            for writer in writers:
                writer.close()
        except BaseException:
            for writer in writers:
                writer.abort()
            raise
        stats = {"input": shown, "part": part and [part.start, part.stop], "stages": [s.stats() for s in steps],
                 "quarantine": dict(quarantine_reasons)}
        atomic_write_json(tmp / "stats.json", stats)
    return stats
