"""Atomic file and directory publication: write under a temporary name, rename when complete.

A crash at any point leaves either the previous file or nothing under the final name, never
a half-written one. Temporary names start with `.` and end with `.tmp` so listings skip them.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import IO, Iterator

TMP_SUFFIX = ".tmp"


def tmp_name_for(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{TMP_SUFFIX}")


def is_tmp_name(name: str) -> bool:
    return name.startswith(".") and name.endswith(TMP_SUFFIX)


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def fsync_tree(directory: str | os.PathLike) -> None:
    """Flush every file and folder under `directory` (before publishing it by a rename)."""
    root = Path(directory)
    for path in [*root.rglob("*"), root]:
        _fsync_dir(path)   # os.open + fsync works for files and folders alike


def publish(tmp: Path, final: Path) -> None:
    """Flush a completely written temporary file and rename it onto its final name."""
    if tmp.is_file():
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
    os.replace(tmp, final)
    _fsync_dir(final.parent)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it is fsynced and renamed onto `path`."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name_for(final)
    try:
        yield tmp
        publish(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", **kwargs) -> Iterator[IO]:
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as fh:
        yield fh


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def atomic_write_json(path: str | os.PathLike, obj, indent: int = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike):
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def read_json_file(path: str | os.PathLike) -> dict:
    """A JSON object from a file the user gave us: anything else is a one-line UserError."""
    from stack_common.errors import UserError

    try:
        value = read_json(path)
    except (OSError, ValueError) as err:
        raise UserError(f"not readable JSON: {err}", file=path) from None
    if not isinstance(value, dict):
        raise UserError("not a JSON object", file=path)
    return value


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory; on success rename it to `path`.

    With overwrite=True an existing `path` is moved aside first and removed only after the new
    one is in place.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name_for(final)
    tmp.mkdir()
    try:
        yield tmp
        _fsync_dir(tmp)
        old = None
        if final.exists():
            if not overwrite:
                raise FileExistsError(f"{final} already exists")
            old = tmp_name_for(final.with_name(final.name + ".old"))
            os.replace(final, old)
        os.replace(tmp, final)
        _fsync_dir(final.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def remove_stale_tmp(directory: str | os.PathLike) -> int:
    """Delete leftovers of interrupted writers in `directory`; returns how many were removed."""
    removed = 0
    d = Path(directory)
    if not d.is_dir():
        return 0
    for entry in d.iterdir():
        if is_tmp_name(entry.name):
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
            removed += 1
    return removed
