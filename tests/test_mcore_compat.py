"""pretrain.mcore_compat on the installed megatron-core (0.16.1 or 0.19): checkpoint saves (sync
and async) read back, the format guard agrees with what megatron can load, configs build quietly.
Saves and loads run in one spawned rank (gloo); this pytest process stays unpatched."""
import os
import warnings

import pytest
import torch

from _dist_helpers import launch


def _ckpt_worker(rank: int, world: int, out_dir: str) -> dict:
    from _dist_helpers import init_layout

    init_layout(1, 1)
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.mapping import ShardedTensor
    from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue

    from pretrain.mcore_compat import check_loadable, dist_save
    from pretrain.parallel import destroy
    from stack_common.errors import UserError

    def state(t):
        return {"w": ShardedTensor.from_rank_offsets("w", t, replica_id=0), "step": 7}

    def load(path):
        out = dist_checkpointing.load({"w": state(torch.zeros(6))["w"]}, path)
        return out["w"].tolist(), out["step"]

    try:
        sync_dir, async_dir = os.path.join(out_dir, "sync"), os.path.join(out_dir, "async")
        os.makedirs(sync_dir), os.makedirs(async_dir)
        assert dist_save(state(torch.arange(6.0)), sync_dir) is None
        queue, finalized = AsyncCallsQueue(persistent=False), []
        request = dist_save(state(torch.arange(6.0) * 2), async_dir, async_save=True)
        request.add_finalize_fn(lambda: finalized.append(True))
        queue.schedule_async_request(request)
        queue.maybe_finalize_async_calls(blocking=True)
        result = {"sync": load(sync_dir), "async": load(async_dir), "finalized": finalized,
                  "async_files": sorted(os.listdir(async_dir))}
        check_loadable(sync_dir)                 # its own format always passes
        # Without common.pt: megatron either reads the checkpoint or the guard refuses it.
        common = os.path.join(sync_dir, "common.pt")
        if os.path.exists(common):
            os.remove(common)
        try:
            check_loadable(sync_dir)
            result["guard"] = "passed"
        except UserError as err:
            result["guard"] = str(err)
        try:
            result["without_common_pt"] = load(sync_dir)
        except Exception as err:
            result["without_common_pt"] = f"load failed: {type(err).__name__}"
        return result
    finally:
        destroy()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    return launch(1, _ckpt_worker, str(tmp_path_factory.mktemp("mcore_compat")))[0]


def test_sync_and_async_saves_read_back(saved):
    assert saved["sync"] == ([0.0, 1.0, 2.0, 3.0, 4.0, 5.0], 7)
    assert saved["async"] == ([0.0, 2.0, 4.0, 6.0, 8.0, 10.0], 7)
    assert saved["finalized"] == [True] and "metadata.json" in saved["async_files"]


def test_format_guard_refuses_exactly_what_megatron_cannot_load(saved):
    if saved["guard"] == "passed":
        assert saved["without_common_pt"] == ([0.0, 1.0, 2.0, 3.0, 4.0, 5.0], 7)
    else:
        assert "common.pt" in saved["guard"] and "newer megatron-core" in saved["guard"]
        assert saved["without_common_pt"].startswith("load failed")


def test_transformer_config_builds_without_deprecation_warnings():
    from megatron.core.transformer import TransformerConfig  # noqa: F401  (import-time warnings apart)

    from pretrain.model import ModelConfig, transformer_config

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = transformer_config(ModelConfig(), tp=1, pp=1)
    assert [str(w.message) for w in caught if "deprecated" in str(w.message)] == []
    assert config.num_layers == ModelConfig().num_layers and config.cuda_graph_impl == "none"
    assert getattr(config, "cuda_graph_modules", None) == [] or config.cuda_graph_scope == []
