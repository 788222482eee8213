"""Streaming writer of sharded safetensors with the Hugging Face index file.

Tensors arrive one by one; a shard is flushed to disk (temp name, then rename) as soon as it
reaches `max_shard_bytes`, so memory holds at most one shard plus the incoming tensor."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from stack_common.atomic import atomic_path, atomic_write_json

INDEX = "model.safetensors.index.json"


class ShardedSafetensorsWriter:
    def __init__(self, out_dir: Path, max_shard_bytes: int = 2 << 30):
        self.out_dir = Path(out_dir)
        self.max_shard_bytes = max_shard_bytes
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes = 0
        self.shards: list[tuple[str, list[str]]] = []  # temporary numbering: renamed at close
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        nbytes = tensor.numel() * tensor.element_size()
        if self.pending and self.pending_bytes + nbytes > self.max_shard_bytes:
            self._flush()
        self.pending[name] = tensor.contiguous()
        self.pending_bytes += nbytes
        self.total_bytes += nbytes

    def make_room(self, nbytes: int) -> None:
        """Flush now if a tensor of `nbytes` about to be read would not fit in the current
        shard, so the pending shard and the new tensor are never in memory together."""
        if self.pending and self.pending_bytes + nbytes > self.max_shard_bytes:
            self._flush()

    def _flush(self) -> None:
        name = f"part-{len(self.shards) + 1:05d}.safetensors"
        with atomic_path(self.out_dir / name) as tmp:
            save_file(self.pending, str(tmp), metadata={"format": "pt"})
        self.shards.append((name, list(self.pending)))
        self.pending, self.pending_bytes = {}, 0

    def close(self) -> list[str]:
        """Give the shards their final names (model-0000i-of-0000n) and write the index."""
        if self.pending:
            self._flush()
        n = len(self.shards)
        weight_map, files = {}, []
        for i, (tmp_name, names) in enumerate(self.shards, start=1):
            final = "model.safetensors" if n == 1 else f"model-{i:05d}-of-{n:05d}.safetensors"
            (self.out_dir / tmp_name).rename(self.out_dir / final)
            files.append(final)
            weight_map.update({k: final for k in names})
        atomic_write_json(self.out_dir / INDEX, {"metadata": {"total_size": self.total_bytes},
                                                 "weight_map": dict(sorted(weight_map.items()))})
        return files
