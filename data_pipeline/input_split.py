"""Input files cut into work units of about `reader.unit_mb`, so that one large file is read by
several workers, and a killed run redoes a part, not the file.

A part is a run of Parquet row groups, of record batches of a local Arrow IPC file, or of whole
lines of a local uncompressed JSONL file (cut at the first line start past each unit_mb of bytes;
the driver counts the lines before each cut in one pass). Compressed JSONL, Arrow streams and Arrow
files behind a URI stay whole. Each part knows the records before it (`before`: rows or lines), so
ids, line numbers and quarantine rows are those of the whole file read at once, and the run's
records come out in the same order: parts follow each other as units.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pyarrow as pa
import pyarrow.parquet as pq

from stack_common.storage import Place

PLAIN_JSONL = (".jsonl", ".json", ".ndjson")
ARROW_FILES = (".arrow", ".feather", ".ipc")
SCAN_CHUNK = 1 << 22


@dataclass(frozen=True)
class FilePart:
    """Row groups / record batches / bytes [start, stop) of a file; `before`: rows or lines before it."""
    start: int
    stop: int
    before: int


def plan_parts(path, unit_mb: float) -> list[Optional[FilePart]]:
    """The parts of one input file, in order; [None]: the file is one unit."""
    if unit_mb <= 0:
        return [None]
    unit_bytes = int(unit_mb * (1 << 20))
    place = Place.of(path)
    try:
        if place.size() <= unit_bytes:      # one unit whatever its layout: no footer read, no scan
            return [None]
        if place.name.endswith(".parquet"):
            return _parquet_parts(place, unit_bytes)
        if place.local and place.name.endswith(PLAIN_JSONL):
            return _jsonl_parts(place.path, unit_bytes)
        if place.local and place.name.endswith(ARROW_FILES):
            return _arrow_parts(place, unit_bytes)
    except (pa.ArrowException, OSError):
        pass        # unreadable: read whole, the reader quarantines it with the reason
    return [None]


def _grouped(sizes: list[int], rows: list[int], unit_bytes: int) -> list[Optional[FilePart]]:
    """Consecutive pieces (row groups, batches) grouped into parts of at least unit_bytes."""
    parts, start, size, before, rows_in = [], 0, 0, 0, 0
    for i, (piece_bytes, piece_rows) in enumerate(zip(sizes, rows)):
        size += piece_bytes
        rows_in += piece_rows
        if size >= unit_bytes or i == len(sizes) - 1:
            parts.append(FilePart(start, i + 1, before))
            start, size, before, rows_in = i + 1, 0, before + rows_in, 0
    return parts if len(parts) > 1 else [None]


def _parquet_parts(place: Place, unit_bytes: int) -> list[Optional[FilePart]]:
    with place.open_input() as source:
        meta = pq.ParquetFile(source).metadata
    groups = [meta.row_group(i) for i in range(meta.num_row_groups)]
    sizes = [sum(g.column(c).total_compressed_size for c in range(g.num_columns)) for g in groups]
    return _grouped(sizes, [g.num_rows for g in groups], unit_bytes)


def _arrow_parts(place: Place, unit_bytes: int) -> list[Optional[FilePart]]:
    with place.open_input() as source:
        try:
            reader = pa.ipc.open_file(source)
        except pa.ArrowInvalid:             # a stream: read whole
            return [None]
        sizes, rows = [], []
        for i in range(reader.num_record_batches):      # one at a time: a compressed batch is decompressed
            batch = reader.get_batch(i)
            sizes.append(batch.nbytes)
            rows.append(batch.num_rows)
    return _grouped(sizes, rows, unit_bytes)


def _jsonl_parts(path: str, unit_bytes: int) -> list[Optional[FilePart]]:
    """Cuts right after the first newline at or past each unit_bytes since the last cut."""
    cuts, lines_before = [0], [0]
    target, pos, lines = unit_bytes, 0, 0
    with open(path, "rb") as fh:
        while chunk := fh.read(SCAN_CHUNK):
            while True:
                newline = chunk.find(b"\n", max(target - pos, 0))
                if newline < 0:
                    break
                cuts.append(pos + newline + 1)
                lines_before.append(lines + chunk.count(b"\n", 0, newline + 1))
                target = cuts[-1] + unit_bytes
            lines += chunk.count(b"\n")
            pos += len(chunk)
    if cuts[-1] >= pos:                     # a cut at the very end starts no part
        cuts.pop()
        lines_before.pop()
    stops = cuts[1:] + [pos]
    parts = [FilePart(start, stop, before) for start, stop, before in zip(cuts, stops, lines_before)]
    return parts if len(parts) > 1 else [None]


def read_part_lines(path: str, part: FilePart):
    """The lines (with their newline) of bytes [part.start, part.stop) of a local file."""
    with open(path, "rb") as fh:
        fh.seek(part.start)
        remaining = part.stop - part.start
        for line in fh:
            yield line
            remaining -= len(line)
            if remaining <= 0:
                return
