"""Where shard files live: a local path, or a URI (file://, s3://, gs://, hdfs://) that pyarrow.fs
resolves (`FileSystem.from_uri`).

A local path keeps the POSIX route of `stack_common.atomic` (temp name, fsync, rename; reads are
memory-mapped). Through a URI a file is also written under a temp name and then moved onto its final
name: a rename on local disks and HDFS, a server-side copy on object stores, where the final key
appears only complete either way.

A URI's query (`s3://bucket/dir?endpoint_override=host:port&scheme=http`) configures its filesystem:
it stays on every URI derived from it (children, temp names), after the path. Names are
percent-escaped in URIs (a space, %, # or ? in an object name) and plain in `path`.
"""
from __future__ import annotations

import hashlib
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Optional
from urllib.parse import quote, urlsplit, urlunsplit

import pyarrow as pa
import pyarrow.fs as pafs

from .atomic import TMP_SUFFIX


STREAM_BUFFER = 1 << 20     # bytes a remote stream fetches at once: gzip reads 8 KiB at a time, one request each


def is_uri(location) -> bool:
    return isinstance(location, str) and "://" in location


QUERY_RE = re.compile(r"[A-Za-z_]\w*=[^/?&]*(?:&[A-Za-z_]\w*=[^/?&]*)*")


def split_query(uri: str) -> tuple[str, str]:
    """(the URI without its query, the query): `s3://b/k?scheme=http` -> ('s3://b/k', 'scheme=http').
    Only `key=value&...` after the last '?' is a query: in `s3://b/part-?.jsonl` '?' is a wildcard."""
    base, mark, query = uri.rpartition("?")
    return (base, query) if mark and QUERY_RE.fullmatch(query) else (uri, "")


def public_uri(location) -> str:
    """The URI as it may be shown or recorded: without user:password@ and without the query (which
    may hold keys); a local path as it is."""
    if not is_uri(location):
        return str(location)
    parts = urlsplit(split_query(location)[0])
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


@dataclass(frozen=True)
class Place:
    """A file or directory: `fs` None for a local path, else the pyarrow FileSystem of its URI
    (`base`: the URI without its query, names percent-escaped; `query`: the filesystem's options)."""
    fs: Optional[pafs.FileSystem]
    path: str
    base: str = ""
    query: str = ""

    @classmethod
    def of(cls, location) -> "Place":
        if isinstance(location, Place):
            return location
        if is_uri(location):
            fs, path = pafs.FileSystem.from_uri(location)
            base, query = split_query(location)
            return cls(fs, path.rstrip("/") or "/", base.rstrip("/"), query)
        return cls(None, str(location))

    @property
    def uri(self) -> str:
        return f"{self.base}?{self.query}" if self.query else self.base

    @property
    def local(self) -> bool:
        return self.fs is None

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    def child(self, name: str) -> "Place":
        """`name` may hold '/' (a path below this one)."""
        if self.local:
            return Place(None, str(Path(self.path) / name))
        return Place(self.fs, f"{self.path.rstrip('/')}/{name}", f"{self.base}/{quote(name)}", self.query)

    def location(self):
        """What callers get back: a Path for a local place, the URI otherwise."""
        return Path(self.path) if self.local else self.uri

    def parent(self) -> "Place":
        """The folder that holds this file, with the same query."""
        if self.local:
            return Place(None, str(Path(self.path).parent))
        return Place(self.fs, self.path.rpartition("/")[0] or "/", self.base.rpartition("/")[0], self.query)

    def tmp_sibling(self) -> "Place":
        """A temporary name next to this file (`.<name>.<pid>.<random>.tmp`, skipped by listings)."""
        return self.parent().child(f".{self.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{TMP_SUFFIX}")

    def make_dirs(self) -> None:
        if self.local:
            Path(self.path).mkdir(parents=True, exist_ok=True)
        else:
            self.fs.create_dir(self.path, recursive=True)

    def info(self) -> pafs.FileInfo:
        if self.local:
            return pafs.LocalFileSystem().get_file_info(os.path.abspath(self.path))
        return self.fs.get_file_info(self.path)

    def is_file(self) -> bool:
        return self.info().type == pafs.FileType.File

    def is_dir(self) -> bool:
        return self.info().type == pafs.FileType.Directory

    def size(self) -> int:
        return self.info().size

    def open_stream(self):
        """The file's bytes as stored, read front to back (pyarrow would otherwise decompress by
        suffix, e.g. a .zst or .gz name, itself)."""
        if self.local:
            return open(self.path, "rb")
        return self.fs.open_input_stream(self.path, compression=None, buffer_size=STREAM_BUFFER)

    def read_bytes(self) -> bytes:
        with self.open_stream() as src:
            return src.read()

    def sha256(self, chunk: int = 1 << 20) -> str:
        digest = hashlib.sha256()
        with self.open_stream() as src:
            while block := src.read(chunk):
                digest.update(block)
        return digest.hexdigest()

    def open_output(self) -> pa.NativeFile:
        return self.fs.open_output_stream(self.path, compression=None)

    def open_input(self) -> pa.NativeFile:
        """Random access for Arrow IPC files: memory-mapped when local."""
        return pa.memory_map(self.path) if self.local else self.fs.open_input_file(self.path)

    def move_to(self, final: "Place") -> None:
        self.fs.move(self.path, final.path)

    def delete(self) -> None:
        try:
            self.fs.delete_file(self.path)
        except FileNotFoundError:
            pass

    def write_bytes(self, data: bytes) -> None:
        """Write a whole file under a temp name and move it into place (remote places)."""
        tmp = self.tmp_sibling()
        try:
            with tmp.open_output() as sink:
                sink.write(data)
            tmp.move_to(self)
        finally:
            if tmp.is_file():
                tmp.delete()
