"""Readers for JSONL (plain, .gz, .zst), Parquet and Arrow: documents out, bad records set aside.

`read_unit(path, cfg)` yields `Document`s and `BadRecord`s in file order. Nothing a file
contains stops the run: a record that cannot become a document (bad JSON, invalid UTF-8,
missing or non-string text, NUL bytes, too large) and a stream that breaks off (truncated
gzip/zstd, unreadable Parquet) come out as a `BadRecord` with the location and the reason.
"""
from __future__ import annotations

import glob
import gzip
import os
import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Union

import pyarrow as pa
import pyarrow.parquet as pq

from stack_common.errors import UserError
from stack_common.shards import MANIFEST, shard_paths

from .config import ReaderConfig

RAW_LIMIT = 64 * 1024
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson", ".jsonl.gz", ".json.gz", ".ndjson.gz", ".jsonl.zst",
                  ".json.zst", ".ndjson.zst")
SUFFIXES = JSONL_SUFFIXES + (".parquet", ".arrow", ".feather", ".ipc")
UNSCORED = -1.0


@dataclass
class Document:
    id: str
    text: str
    source: str
    lang: str = ""
    quality_score: float = UNSCORED
    annotations: dict = field(default_factory=dict)


@dataclass
class BadRecord:
    file: str
    location: str
    reason: str
    raw: bytes

    def row(self) -> dict:
        return {"file": self.file, "location": self.location, "reason": self.reason, "raw": self.raw[:RAW_LIMIT]}


Record = Union[Document, BadRecord]


def expand_inputs(patterns: list[str]) -> list[Path]:
    """Input files from globs, files and shard directories, sorted and de-duplicated."""
    files: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(str(Path(pattern).expanduser()), recursive=True))
        if not matches:
            raise UserError("input matches no file", file=pattern, expected="a file, glob or shard directory")
        for match in map(Path, matches):
            if match.is_dir():
                files.extend(_files_in_dir(match))
            else:
                files.append(match)
    unique = list(dict.fromkeys(p.resolve() for p in files))
    if not unique:
        raise UserError("inputs contain no readable file", file=", ".join(patterns),
                        expected=f"files ending in one of {', '.join(SUFFIXES)}")
    return unique


def input_id_names(paths: list[Path]) -> list[str]:
    """Each input's path relative to the folder that holds them all: unique (unlike the file name:
    a/part-0.jsonl and b/part-0.jsonl) and the same on every machine that has the same layout."""
    if len(paths) == 1:
        return [paths[0].name]
    root = Path(os.path.commonpath([p.parent for p in paths]))
    return [p.relative_to(root).as_posix() for p in paths]


def _files_in_dir(directory: Path) -> list[Path]:
    if (directory / MANIFEST).is_file():
        return shard_paths(directory)
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name.endswith(SUFFIXES))


def read_unit(path: Path, cfg: ReaderConfig, id_name: str | None = None) -> Iterator[Record]:
    """Records of one input file; a record without an id gets `<id_name>:<line or row>`, id_name being
    the file's path relative to the inputs' common folder (see input_id_names)."""
    name = path.name
    id_name = id_name or name
    if name.endswith(JSONL_SUFFIXES):
        yield from _read_jsonl(path, cfg, id_name)
    elif name.endswith(".parquet"):
        yield from _read_parquet(path, cfg, id_name)
    elif name.endswith((".arrow", ".feather", ".ipc")):
        yield from _read_arrow(path, cfg, id_name)
    else:
        yield BadRecord(str(path), "file", f"unsupported_format: expected one of {', '.join(SUFFIXES)}", b"")


# --- JSONL --------------------------------------------------------------------------------------

def _iter_lines(path: Path) -> Iterator[bytes]:
    if path.name.endswith(".zst"):
        yield from _split_lines(_zstd_chunks(path))
        return
    with (gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")) as fh:
        yield from fh


def _zstd_chunks(path: Path, size: int = 1 << 20) -> Iterator[bytes]:
    """Decompressed data frame by frame; a stream that ends inside a frame raises EOFError
    (zstandard's stream reader would end quietly and lose the last block)."""
    import zstandard

    decompressor = zstandard.ZstdDecompressor()
    frame, in_frame, data = decompressor.decompressobj(), False, b""
    with open(path, "rb") as fh:
        while data or (data := fh.read(size)):
            yield frame.decompress(data)
            in_frame, data = True, b""
            if frame.eof:   # the rest belongs to the next frame
                frame, in_frame, data = decompressor.decompressobj(), False, frame.unused_data
    if in_frame:
        raise EOFError("zstd stream ends inside a frame (truncated file)")


def _split_lines(chunks: Iterator[bytes]) -> Iterator[bytes]:
    rest = b""
    for chunk in chunks:
        lines = (rest + chunk).split(b"\n")
        rest = lines.pop()
        for line in lines:
            yield line + b"\n"
    if rest:
        yield rest


STREAM_ERRORS = (EOFError, OSError, zlib.error, gzip.BadGzipFile)


def _read_jsonl(path: Path, cfg: ReaderConfig, id_name: str) -> Iterator[Record]:
    line_no = 0
    try:
        for line_no, raw in enumerate(_iter_lines(path), start=1):
            if raw.strip():
                yield _parse_json_line(raw, path, line_no, cfg, id_name)
    except STREAM_ERRORS as err:
        yield BadRecord(str(path), f"line {line_no + 1}", f"broken_stream: {type(err).__name__}: {err}", b"")
    except Exception as err:  # zstandard.ZstdError: the stream ends here
        if type(err).__module__.startswith("zstandard"):
            yield BadRecord(str(path), f"line {line_no + 1}", f"broken_stream: {err}", b"")
        else:
            raise


def _parse_json_line(raw: bytes, path: Path, line_no: int, cfg: ReaderConfig, id_name: str) -> Record:
    where = f"line {line_no}"
    if len(raw) > cfg.max_text_bytes:
        return BadRecord(str(path), where, f"too_large: {len(raw)} bytes > reader.max_text_bytes", raw)
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return BadRecord(str(path), where, f"invalid_utf8: byte {err.start}", raw)
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as err:
        return BadRecord(str(path), where, f"bad_json: {err.msg} at column {err.colno}", raw)
    if not isinstance(obj, dict):
        return BadRecord(str(path), where, f"not_an_object: JSON {type(obj).__name__}", raw)
    return _to_document(obj, path, where, f"{id_name}:{line_no}", cfg, raw)


def _to_document(obj: dict, path: Path, where: str, fallback_id: str, cfg: ReaderConfig, raw: bytes) -> Record:
    text = obj.get(cfg.text_field)
    if cfg.text_field not in obj or text is None:
        return BadRecord(str(path), where, f"missing_text: no field '{cfg.text_field}'", raw)
    if not isinstance(text, str):
        return BadRecord(str(path), where, f"text_not_string: field '{cfg.text_field}' is {type(text).__name__}", raw)
    if "\x00" in text:
        return BadRecord(str(path), where, f"nul_byte: field '{cfg.text_field}' contains U+0000", raw)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        return BadRecord(str(path), where, f"invalid_utf8: field '{cfg.text_field}' has a lone surrogate at {err.start}", raw)
    doc_id = obj.get(cfg.id_field)
    source = obj.get(cfg.source_field)
    doc = Document(id=str(doc_id) if doc_id is not None else fallback_id,
                   text=text,
                   source=str(source) if source is not None else (cfg.default_source or _stem(path)))
    if cfg.lang_field and isinstance(obj.get(cfg.lang_field), str):
        doc.lang = obj[cfg.lang_field]
    for key in cfg.metadata_fields:
        if key in obj:
            doc.annotations[key] = obj[key]
    return doc


def _stem(path: Path) -> str:
    name = path.name
    for suffix in sorted(SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


# --- Parquet and Arrow ----------------------------------------------------------------------------

def _read_parquet(path: Path, cfg: ReaderConfig, id_name: str) -> Iterator[Record]:
    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=1024)
        yield from _read_batches(batches, path, cfg, id_name)
    except (pa.ArrowException, OSError) as err:
        yield BadRecord(str(path), "file", f"unreadable_file: {err}", b"")


def _read_arrow(path: Path, cfg: ReaderConfig, id_name: str) -> Iterator[Record]:
    try:
        source = pa.memory_map(str(path))
        try:
            reader = pa.ipc.open_file(source)
            batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
        except pa.ArrowInvalid:
            batches = iter(pa.ipc.open_stream(source))
        yield from _read_batches(batches, path, cfg, id_name)
    except (pa.ArrowException, OSError) as err:
        yield BadRecord(str(path), "file", f"unreadable_file: {err}", b"")


def _read_batches(batches, path: Path, cfg: ReaderConfig, id_name: str) -> Iterator[Record]:
    row = 0
    for batch in batches:
        pipeline_shard = {"lang", "quality_score", "annotations"} <= set(batch.schema.names)
        for obj in batch.to_pylist():
            row += 1
            text = obj.get(cfg.text_field)
            too_large = isinstance(text, str) and len(text.encode("utf-8", "surrogatepass")) > cfg.max_text_bytes
            raw = b""
            if not isinstance(text, str) or too_large:
                raw = json.dumps(obj, ensure_ascii=False, default=str).encode("utf-8", "replace")
            if too_large:
                yield BadRecord(str(path), f"row {row}", "too_large: text exceeds reader.max_text_bytes", raw)
                continue
            record = _to_document(obj, path, f"row {row}", f"{id_name}:{row}", cfg, raw)
            if pipeline_shard and isinstance(record, Document):
                record.lang = obj["lang"] or ""
                record.quality_score = obj["quality_score"] if obj["quality_score"] is not None else UNSCORED
                record.annotations = json.loads(obj["annotations"] or "{}")
            yield record
