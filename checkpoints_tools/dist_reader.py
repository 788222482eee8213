"""Read a megatron-core torch_dist checkpoint one global tensor (or one layer of it) at a time.

No process group and no model are needed: the torch.distributed.checkpoint metadata lists, for
each key, the chunks every rank wrote (offset, size, file, byte range). A tensor is assembled
from the chunks that overlap the requested slice, so peak memory stays near one tensor."""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from stack_common.atomic import read_json_file
from stack_common.errors import UserError

DCP_METADATA = ".metadata"
MCORE_METADATA = "metadata.json"
META = "meta.json"


@dataclass
class Chunk:
    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    file: str
    byte_offset: int
    byte_length: int


class DistCheckpointReader:
    def __init__(self, ckpt_dir: str | os.PathLike):
        self.dir = Path(ckpt_dir)
        check_complete(self.dir)
        from torch.distributed.checkpoint import FileSystemReader
        from torch.distributed.checkpoint.metadata import TensorStorageMetadata

        try:
            metadata = FileSystemReader(str(self.dir)).read_metadata()
        except Exception as err:  # a truncated pickle, a wrong file
            raise UserError(f"cannot read the checkpoint index: {err}", file=self.dir / DCP_METADATA,
                            expected="a torch.distributed.checkpoint metadata file") from err
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.dtypes: dict[str, torch.dtype] = {}
        self.chunks: dict[str, list[Chunk]] = {}
        storage = {(idx.fqn, tuple(idx.offset)): info for idx, info in metadata.storage_data.items()
                   if idx.offset is not None}  # None: pickled objects (RNG states), not tensors
        for key, md in metadata.state_dict_metadata.items():
            if not isinstance(md, TensorStorageMetadata):
                continue
            self.shapes[key] = tuple(md.size)
            self.dtypes[key] = md.properties.dtype
            self.chunks[key] = []
            for ch in md.chunks:
                info = storage.get((key, tuple(ch.offsets)))
                if info is None:
                    raise UserError(f"chunk at offset {tuple(ch.offsets)} has no storage entry",
                                    file=self.dir / DCP_METADATA, field=key)
                if getattr(info, "transform_descriptors", None):
                    raise UserError("compressed or transformed storage is not supported",
                                    file=self.dir / info.relative_path, field=key)
                self.chunks[key].append(Chunk(tuple(ch.offsets), tuple(ch.sizes), info.relative_path,
                                              info.offset, info.length))
        self._check_files()

    def _check_files(self) -> None:
        """Every referenced file exists and is long enough: a truncated copy fails here, early."""
        needed: dict[str, int] = {}
        for chunks in self.chunks.values():
            for ch in chunks:
                needed[ch.file] = max(needed.get(ch.file, 0), ch.byte_offset + ch.byte_length)
        for name, end in needed.items():
            path = self.dir / name
            if not path.is_file():
                raise UserError("checkpoint data file is missing", file=path,
                                expected="every file listed in .metadata")
            size = path.stat().st_size
            if size < end:
                raise UserError(f"checkpoint data file is truncated: {size} bytes, index needs {end}",
                                file=path)

    def keys(self) -> list[str]:
        return sorted(self.shapes)

    def __contains__(self, key: str) -> bool:
        return key in self.shapes

    def read(self, key: str, index: int | None = None) -> torch.Tensor:
        """The global tensor `key`, or only `key[index]` (one layer of a stacked layer tensor)."""
        if key not in self.shapes:
            raise UserError("tensor not found in the checkpoint", file=self.dir, field=key)
        shape = self.shapes[key]
        lo = [0] * len(shape)
        hi = list(shape)
        if index is not None:
            lo[0], hi[0] = index, index + 1
        wanted = [ch for ch in self.chunks[key]
                  if all(max(o, l) < min(o + s, h) for o, s, l, h in zip(ch.offsets, ch.sizes, lo, hi))]
        if len(wanted) == 1 and list(wanted[0].offsets) == lo and \
                [o + s for o, s in zip(wanted[0].offsets, wanted[0].sizes)] == hi:
            data = self._load_chunk(key, wanted[0])  # one chunk is the whole request: no copy
            return data.squeeze(0) if index is not None else data
        out = torch.empty([h - l for l, h in zip(lo, hi)], dtype=self.dtypes[key])
        covered = 0
        for ch in wanted:
            start = [max(o, l) for o, l in zip(ch.offsets, lo)]
            stop = [min(o + s, h) for o, s, h in zip(ch.offsets, ch.sizes, hi)]
            data = self._load_chunk(key, ch)
            src = data[tuple(slice(a - o, b - o) for a, b, o in zip(start, stop, ch.offsets))]
            out[tuple(slice(a - l, b - l) for a, b, l in zip(start, stop, lo))] = src
            covered += src.numel()
            del data
        if covered != out.numel():
            raise UserError(f"chunks cover {covered} of {out.numel()} elements", file=self.dir,
                            field=key if index is None else f"{key}[{index}]",
                            expected="a complete checkpoint")
        return out.squeeze(0) if index is not None else out

    def _load_chunk(self, key: str, ch: Chunk) -> torch.Tensor:
        path = self.dir / ch.file
        try:
            with open(path, "rb", buffering=0) as fh:
                window = io.BufferedReader(FileWindow(fh, ch.byte_offset, ch.byte_length), 1 << 20)
                tensor = torch.load(window, map_location="cpu", weights_only=True)
        except Exception as err:
            raise UserError(f"cannot decode chunk at offset {ch.byte_offset}: {err}", file=path,
                            field=key) from err
        if tuple(tensor.shape) != ch.sizes:
            raise UserError(f"chunk has shape {tuple(tensor.shape)}, index says {ch.sizes}",
                            file=path, field=key)
        return tensor


class FileWindow(io.RawIOBase):
    """A byte range of an open file seen as a whole file: torch.load reads a chunk straight
    into the tensor's storage, without first copying its bytes into memory."""

    def __init__(self, fh, start: int, length: int):
        self.fh, self.start, self.length, self.pos = fh, start, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.length}[whence]
        self.pos = max(0, min(base + offset, self.length))
        return self.pos

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self.length - self.pos)
        if n <= 0:
            return 0
        self.fh.seek(self.start + self.pos)
        got = self.fh.readinto(memoryview(buffer)[:n])
        self.pos += got
        return got


def check_complete(ckpt_dir: Path) -> None:
    """A published checkpoint has the dist_checkpointing files and meta.json (written last)."""
    if not ckpt_dir.is_dir():
        raise UserError("checkpoint directory does not exist", file=ckpt_dir)
    for name in (MCORE_METADATA, DCP_METADATA, META):
        if not (ckpt_dir / name).is_file():
            raise UserError(f"incomplete checkpoint: {name} is missing", file=ckpt_dir,
                            expected="a checkpoint saved by `python -m pretrain` or `import-hf`")
    backend = read_json_file(ckpt_dir / MCORE_METADATA).get("sharded_backend")
    if backend != "torch_dist":
        raise UserError(f"sharded_backend is {backend!r}", file=ckpt_dir / MCORE_METADATA,
                        field="sharded_backend", expected="torch_dist")
