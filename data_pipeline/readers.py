"""Readers for JSONL (plain, .gz, .zst), Parquet and Arrow: documents out, bad records set aside.

`read_unit(path, cfg)` yields `Document`s and `BadRecord`s in file order. Nothing a file
contains stops the run: a record that cannot become a document (bad JSON, invalid UTF-8,
missing or non-string text, NUL bytes, too large) and a stream that breaks off (truncated
gzip/zstd, unreadable Parquet) come out as a `BadRecord` with the location and the reason.
"""
from __future__ import annotations

import fnmatch
import glob
import gzip
import json
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Union
from urllib.parse import unquote, urlsplit

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from stack_common.errors import UserError
from stack_common.shards import MANIFEST, shard_paths
from stack_common.storage import Place, is_uri, public_uri, split_query

from .config import ReaderConfig
from .input_split import FilePart, read_part_lines

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


Location = Union[Path, str]     # a local path, or a URI that pyarrow.fs resolves (kept as a string)


def expand_inputs(patterns: list[str]) -> list[Location]:
    """Input files from globs, files and shard directories, sorted and de-duplicated: local ones as
    resolved Paths, URIs (file://, s3://, gs://, hdfs://...) as URI strings, so that a worker on
    another node opens them itself."""
    files: list[Location] = []
    for pattern in patterns:
        files.extend(_expand_uri(pattern) if is_uri(pattern) else _expand_local(pattern))
    unique = list(dict.fromkeys(p if is_uri(p) else p.resolve() for p in files))
    if not unique:
        raise UserError("inputs contain no readable file", file=", ".join(patterns),
                        expected=f"files ending in one of {', '.join(SUFFIXES)}")
    return unique


def _expand_local(pattern: str) -> list[Path]:
    matches = sorted(glob.glob(str(Path(pattern).expanduser()), recursive=True))
    if not matches:
        raise UserError("input matches no file", file=pattern, expected="a file, glob or shard directory")
    files: list[Path] = []
    for match in map(Path, matches):
        files.extend(_files_in_dir(match) if match.is_dir() else [match])
    return files


def _expand_uri(pattern: str) -> list[str]:
    """Like the local glob (`*`, `?`, `[...]` within a name, `**` across folders, names starting with
    a dot only when the pattern's do): the folder above the first wildcard is listed and its
    entries matched."""
    base, wildcards = _split_at_wildcard(pattern)
    place = _input_place(base, pattern)
    if not wildcards:
        info = _info(place, pattern)
        if info.type == pafs.FileType.NotFound:
            raise UserError("input URI does not exist", file=public_uri(pattern),
                            expected="a file, glob or shard directory")
        return _files_in_uri_dir(place) if info.type == pafs.FileType.Directory else [place.uri]
    is_dir = _info(place, pattern).type == pafs.FileType.Directory
    entries = _list(place, pattern) if is_dir else []
    matches = sorted((e for e in entries if _glob_match(wildcards, _relative(e.path, place.path).split("/"))),
                     key=lambda e: e.path)
    if is_dir and _glob_match(wildcards, []):     # 'dir/**' matches dir itself too, as glob does
        matches.insert(0, pafs.FileInfo(place.path, pafs.FileType.Directory))
    if not matches:
        raise UserError("input matches no file", file=public_uri(pattern), expected="a file, glob or shard directory")
    files: list[str] = []
    for entry in matches:
        relative = _relative(entry.path, place.path)
        match = place.child(relative) if relative else place
        files.extend(_files_in_uri_dir(match) if entry.type == pafs.FileType.Directory else [match.uri])
    return files


def _split_at_wildcard(pattern: str) -> tuple[str, list[str]]:
    """(the URI of the folder above the first wildcard, with the pattern's query; the wildcard parts,
    percent-decoded like the listed names they are matched against)."""
    base, query = split_query(pattern)
    scheme, _, rest = base.partition("://")
    parts = rest.split("/")
    first = next((i for i, part in enumerate(parts) if glob.has_magic(part)), len(parts))
    folder = f"{scheme}://{'/'.join(parts[:first])}" + (f"?{query}" if query else "")
    return folder, [_literal_escapes(p) for p in parts[first:] if p]


def _literal_escapes(part: str) -> str:
    """A wildcard part percent-decoded, an escaped character matching itself: %5B1%5D is '[1]' as
    written, not a character class."""
    return re.sub(r"%[0-9A-Fa-f]{2}", lambda m: glob.escape(unquote(m.group())), part)


def _input_place(uri: str, pattern: str) -> Place:
    try:
        return Place.of(uri)
    except (pa.ArrowException, OSError, ValueError) as err:
        raise UserError(f"input URI cannot be opened: {err}", file=public_uri(pattern),
                        expected="a URI of a pyarrow.fs filesystem (file://, s3://, gs://, hdfs://...)") from None


def _info(place: Place, pattern: str) -> pafs.FileInfo:
    try:
        return place.info()
    except (pa.ArrowException, OSError) as err:
        raise UserError(f"input URI cannot be read: {err}", file=public_uri(pattern)) from None


def _list(place: Place, pattern: str) -> list[pafs.FileInfo]:
    try:
        return place.fs.get_file_info(pafs.FileSelector(place.path, recursive=True))
    except (pa.ArrowException, OSError) as err:
        raise UserError(f"input URI cannot be listed: {err}", file=public_uri(pattern)) from None


def _relative(path: str, root: str) -> str:
    return path[len(root.rstrip("/")) + 1:]


def _glob_match(pattern: list[str], parts: list[str]) -> bool:
    """`parts` (a path split at '/') matched against `pattern` components the way glob(recursive=True) does."""
    if not pattern:
        return not parts
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        return _glob_match(rest, parts) or (bool(parts) and not _hidden(parts[0], head)
                                            and _glob_match(pattern, parts[1:]))
    return bool(parts) and not _hidden(parts[0], head) and fnmatch.fnmatchcase(parts[0], head) \
        and _glob_match(rest, parts[1:])


def _hidden(name: str, pattern: str) -> bool:
    return name.startswith(".") and not pattern.startswith(".")


def input_id_names(paths: list[Location]) -> list[str]:
    """Each input's path relative to the folder that holds them all: unique (unlike the file name:
    a/part-0.jsonl and b/part-0.jsonl) and the same on every machine that has the same layout. A
    file:// URI gets the same name as its local path."""
    parts = [_id_path(p).split("/") for p in paths]
    if len(parts) == 1:
        return [parts[0][-1]]
    common = 0
    while all(len(p) > common + 1 and p[common] == parts[0][common] for p in parts):
        common += 1
    return ["/".join(p[common:]) for p in parts]


def _id_path(location: Location) -> str:
    if not is_uri(location):
        return Path(location).resolve().as_posix()
    url = urlsplit(split_query(str(location))[0])
    return (url.netloc.rpartition("@")[2] + unquote(url.path)).rstrip("/")


def _files_in_dir(directory: Path) -> list[Path]:
    if (directory / MANIFEST).is_file():
        return shard_paths(directory)
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name.endswith(SUFFIXES))


def _files_in_uri_dir(directory: Place) -> list[str]:
    if directory.child(MANIFEST).is_file():
        return shard_paths(directory.uri)
    entries = _list(directory, directory.uri)
    return sorted(directory.child(_relative(e.path, directory.path)).uri for e in entries
                  if e.type == pafs.FileType.File and e.base_name.endswith(SUFFIXES))


def read_unit(path: Location, cfg: ReaderConfig, id_name: str | None = None,
              part: FilePart | None = None) -> Iterator[Record]:
    """Records of one input file (a local path or a URI), or of one part of it (input_split); a
    record without an id gets `<id_name>:<line or row>`, id_name being the file's path relative to
    the inputs' common folder (see input_id_names), the number counted from the file's start."""
    place = Place.of(path)
    name = place.name
    id_name = id_name or name
    if name.endswith(JSONL_SUFFIXES):
        yield from _read_jsonl(place, cfg, id_name, part)
    elif name.endswith(".parquet"):
        yield from _read_parquet(place, cfg, id_name, part)
    elif name.endswith((".arrow", ".feather", ".ipc")):
        yield from _read_arrow(place, cfg, id_name, part)
    else:
        yield BadRecord(_label(place), "file", f"unsupported_format: expected one of {', '.join(SUFFIXES)}", b"")


def _label(place: Place) -> str:
    """How records and errors name the file: its local path or its URI."""
    return place.path if place.local else public_uri(place.uri)


# --- JSONL --------------------------------------------------------------------------------------

def _iter_lines(place: Place) -> Iterator[bytes]:
    if place.name.endswith(".zst"):
        yield from _split_lines(_zstd_chunks(place))
        return
    with place.open_stream() as raw:
        if place.name.endswith(".gz"):
            with gzip.open(raw, "rb") as fh:
                yield from fh
        elif place.local:
            yield from raw
        else:
            yield from _split_lines(iter(lambda: raw.read(1 << 20), b""))


def _zstd_chunks(place: Place, size: int = 1 << 20) -> Iterator[bytes]:
    """Decompressed data frame by frame; a stream that ends inside a frame raises EOFError
    (zstandard's stream reader would end quietly and lose the last block)."""
    import zstandard

    decompressor = zstandard.ZstdDecompressor()
    frame, in_frame, data = decompressor.decompressobj(), False, b""
    with place.open_stream() as fh:
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


STREAM_ERRORS = (EOFError, OSError, zlib.error, gzip.BadGzipFile, pa.ArrowException)


def _read_jsonl(place: Place, cfg: ReaderConfig, id_name: str, part: FilePart | None) -> Iterator[Record]:
    line_no = part.before if part else 0
    file = _label(place)
    lines = read_part_lines(place.path, part) if part else _iter_lines(place)
    try:
        for line_no, raw in enumerate(lines, start=line_no + 1):
            if raw.strip():
                yield _parse_json_line(raw, place, line_no, cfg, id_name)
    except STREAM_ERRORS as err:
        yield BadRecord(file, f"line {line_no + 1}", f"broken_stream: {type(err).__name__}: {err}", b"")
    except Exception as err:  # zstandard.ZstdError: the stream ends here
        if type(err).__module__.startswith("zstandard"):
            yield BadRecord(file, f"line {line_no + 1}", f"broken_stream: {err}", b"")
        else:
            raise


def _parse_json_line(raw: bytes, place: Place, line_no: int, cfg: ReaderConfig, id_name: str) -> Record:
    where, file = f"line {line_no}", _label(place)
    if len(raw) > cfg.max_text_bytes:
        return BadRecord(file, where, f"too_large: {len(raw)} bytes > reader.max_text_bytes", raw)
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return BadRecord(file, where, f"invalid_utf8: byte {err.start}", raw)
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as err:
        return BadRecord(file, where, f"bad_json: {err.msg} at column {err.colno}", raw)
    if not isinstance(obj, dict):
        return BadRecord(file, where, f"not_an_object: JSON {type(obj).__name__}", raw)
    return _to_document(obj, place, where, f"{id_name}:{line_no}", cfg, raw)


def _to_document(obj: dict, place: Place, where: str, fallback_id: str, cfg: ReaderConfig, raw: bytes) -> Record:
    text, file = obj.get(cfg.text_field), _label(place)
    if cfg.text_field not in obj or text is None:
        return BadRecord(file, where, f"missing_text: no field '{cfg.text_field}'", raw)
    if not isinstance(text, str):
        return BadRecord(file, where, f"text_not_string: field '{cfg.text_field}' is {type(text).__name__}", raw)
    if "\x00" in text:
        return BadRecord(file, where, f"nul_byte: field '{cfg.text_field}' contains U+0000", raw)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        return BadRecord(file, where, f"invalid_utf8: field '{cfg.text_field}' has a lone surrogate at {err.start}", raw)
    doc_id = obj.get(cfg.id_field)
    source = obj.get(cfg.source_field)
    doc = Document(id=str(doc_id) if doc_id is not None else fallback_id,
                   text=text,
                   source=str(source) if source is not None else (cfg.default_source or _stem(place.name)))
    if cfg.lang_field and isinstance(obj.get(cfg.lang_field), str):
        doc.lang = obj[cfg.lang_field]
    for key in cfg.metadata_fields:
        if key in obj:
            doc.annotations[key] = obj[key]
    return doc


def _stem(name: str) -> str:
    for suffix in sorted(SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


# --- Parquet and Arrow ----------------------------------------------------------------------------

def _read_parquet(place: Place, cfg: ReaderConfig, id_name: str, part: FilePart | None) -> Iterator[Record]:
    try:
        with place.open_input() as source:
            groups = range(part.start, part.stop) if part else None
            batches = pq.ParquetFile(source).iter_batches(batch_size=1024, row_groups=groups)
            yield from _read_batches(batches, place, cfg, id_name, part.before if part else 0)
    except (pa.ArrowException, OSError) as err:
        yield BadRecord(_label(place), "file", f"unreadable_file: {err}", b"")


def _read_arrow(place: Place, cfg: ReaderConfig, id_name: str, part: FilePart | None) -> Iterator[Record]:
    try:
        with place.open_input() as source:
            try:
                reader = pa.ipc.open_file(source)
                wanted = range(part.start, part.stop) if part else range(reader.num_record_batches)
                batches = (reader.get_batch(i) for i in wanted)
            except pa.ArrowInvalid:
                source.seek(0)
                batches = iter(pa.ipc.open_stream(source))
            yield from _read_batches(batches, place, cfg, id_name, part.before if part else 0)
    except (pa.ArrowException, OSError) as err:
        yield BadRecord(_label(place), "file", f"unreadable_file: {err}", b"")


def _read_batches(batches, place: Place, cfg: ReaderConfig, id_name: str, before: int = 0) -> Iterator[Record]:
    row, file = before, _label(place)
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
                yield BadRecord(file, f"row {row}", "too_large: text exceeds reader.max_text_bytes", raw)
                continue
            record = _to_document(obj, place, f"row {row}", f"{id_name}:{row}", cfg, raw)
            if pipeline_shard and isinstance(record, Document):
                record.lang = obj["lang"] or ""
                record.quality_score = obj["quality_score"] if obj["quality_score"] is not None else UNSCORED
                record.annotations = json.loads(obj["annotations"] or "{}")
            yield record
