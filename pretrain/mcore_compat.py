"""The megatron-core API differences between 0.16.1 (Python 3.11) and 0.19.x, in one place.

Each helper asks the installed megatron-core what it offers (a keyword, a config field), not
its version number:
- Async checkpoint saves: 0.19 hands them to nvidia-resiliency-ext by default
  (`async_strategy="nvrx"`, an optional package with its own request queue). `dist_save` asks
  for megatron's own implementation, the only one 0.16.1 has, so megatron's `AsyncCallsQueue`
  serves both versions.
- Checkpoint format: 0.19 keeps the common (non-tensor) state inside the torch_dist files, not
  in `common.pt`. It reads 0.16.1 checkpoints; 0.16.1 cannot read its checkpoints, and
  `check_loadable` says so instead of megatron's AttributeError.
- TransformerConfig: 0.16.1's `cuda_graph_scope` is `cuda_graph_modules` in 0.19 (the old name
  warns there). Both default to "full", deprecated, with a warning for every config; we capture
  no CUDA graphs, so `transformer_config_kwargs` sets the equivalent [] under the installed name.
"""
from __future__ import annotations

import inspect
from pathlib import Path


def _accepts(fn, keyword: str) -> bool:
    return keyword in inspect.signature(fn).parameters


def transformer_config_kwargs() -> dict:
    """Extra TransformerConfig keywords for this megatron-core."""
    from megatron.core.transformer import TransformerConfig

    fields = TransformerConfig.__dataclass_fields__
    return {"cuda_graph_modules" if "cuda_graph_modules" in fields else "cuda_graph_scope": []}


def dist_save(sharded_state_dict: dict, checkpoint_dir, *, async_save: bool = False,
              content_metadata: dict | None = None, parallel_group=None):
    """`dist_checkpointing.save` in the torch_dist format (the default of both versions).
    With `async_save`, returns the request to schedule on megatron's `AsyncCallsQueue`.
    With `parallel_group` (the data-parallel group), the replicas' writes are spread over its
    ranks (megatron's fully parallel save) instead of all falling to its first rank."""
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.serialization import get_default_save_sharded_strategy
    from megatron.core.dist_checkpointing.strategies.fully_parallel import FullyParallelSaveStrategyWrapper

    extra = {}
    if async_save and _accepts(dist_checkpointing.save, "async_strategy"):
        extra["async_strategy"] = "mcore"
    if parallel_group is not None:
        extra["sharded_strategy"] = FullyParallelSaveStrategyWrapper(
            get_default_save_sharded_strategy("torch_dist"), parallel_group)
    return dist_checkpointing.save(sharded_state_dict, str(checkpoint_dir), async_sharded_save=async_save,
                                   content_metadata=content_metadata, **extra)


def dist_load(sharded_state_dict: dict, checkpoint_dir, *, parallel_group=None) -> tuple[dict, set, set]:
    """`dist_checkpointing.load` returning (state, in the checkpoint but not asked for, asked
    for but not in the checkpoint); the second kind is left out of the load instead of failing.
    With `parallel_group`, each replica is read once in the group and exchanged (megatron's
    fully parallel load)."""
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.serialization import get_default_load_sharded_strategy
    from megatron.core.dist_checkpointing.strategies.fully_parallel import FullyParallelLoadStrategyWrapper
    from megatron.core.dist_checkpointing.validation import StrictHandling

    strategy = None
    if parallel_group is not None:
        strategy = FullyParallelLoadStrategyWrapper(get_default_load_sharded_strategy(str(checkpoint_dir)),
                                                    parallel_group)
    # megatron's words: "missing" = in the checkpoint, not requested; "unexpected" = the reverse.
    state, not_asked, not_found = dist_checkpointing.load(
        sharded_state_dict, str(checkpoint_dir), sharded_strategy=strategy, strict=StrictHandling.RETURN_ALL)
    return state, set(not_asked), set(not_found)


def check_loadable(ckpt_dir) -> None:
    """Raise a UserError when this megatron-core cannot read the checkpoint's format."""
    from megatron.core import dist_checkpointing

    from stack_common.errors import UserError

    # Versions whose load() still takes a common_strategy read the common state only from common.pt.
    common = Path(ckpt_dir) / "common.pt"
    if _accepts(dist_checkpointing.load, "common_strategy") and not common.is_file():
        raise UserError("the checkpoint was saved by a newer megatron-core (common state inside the "
                        "torch_dist files), which this megatron-core cannot read", file=common,
                        expected="the megatron-core that saved it; 0.19 reads both formats")
