"""In-process checks of the pretraining run's parts: data order, checkpoint discovery, loss
watch, Slurm environment, config composition."""
from __future__ import annotations

import json

import pytest
import torch


def test_microbatches_partition_global_batches_and_continue_exactly():
    from pretrain.data import microbatches

    dataset = [{"tokens": torch.tensor([i])} for i in range(40)]
    mbs, dp, gbs = 2, 2, 8
    per_rank = [list(microbatches(dataset, 0, mbs, r, dp)) for r in range(dp)]
    # Iteration 0 covers samples 0..7 exactly once across ranks and microbatches.
    first_iter = sorted(int(t) for r in range(dp) for b in per_rank[r][:gbs // (mbs * dp)]
                        for t in b["tokens"].flatten())
    assert first_iter == list(range(8))
    # Starting at consumed_samples = 16 gives what a run that never stopped reads next.
    for r in range(dp):
        resumed = list(microbatches(dataset, 16, mbs, r, dp))
        skipped = (16 // (mbs * dp))
        assert [b["tokens"].tolist() for b in resumed] == [b["tokens"].tolist() for b in per_rank[r][skipped:]]


def test_find_latest_falls_back_when_pointer_names_a_torn_checkpoint(tmp_path):
    from pretrain.checkpointing import find_latest

    root = tmp_path / "checkpoints"
    for it, complete in ((100, True), (200, True), (300, False)):
        d = root / f"iter_{it:07d}"
        d.mkdir(parents=True)
        (d / "metadata.json").write_text("{}")
        if complete:
            (d / "meta.json").write_text(json.dumps({"iteration": it}))
    assert find_latest(root).name == "iter_0000200"          # no pointer: newest complete
    (root / "latest").write_text("iter_0000100\n")
    assert find_latest(root).name == "iter_0000100"          # the pointer wins
    (root / "latest").write_text("iter_0000300\n")
    assert find_latest(root).name == "iter_0000200"          # pointer to an incomplete dir
    assert find_latest(tmp_path / "none") is None


def test_loss_watch_counts_skipped_steps_in_a_row_and_spikes():
    from pretrain.faults import LossWatch

    watch = LossWatch(max_in_row=2, spike_factor=2.0, window=20)
    for _ in range(12):
        watch.record(skipped=False)
        assert not watch.is_spike(3.0)
    assert watch.is_spike(7.0) and watch.spikes == 1
    assert not watch.is_spike(5.0)
    watch.record(skipped=True)      # a NaN loss
    assert not watch.too_many()
    watch.record(skipped=True)      # a finite loss with an infinite grad norm counts too
    assert watch.too_many() and watch.in_row == 2
    watch.record(skipped=False)
    assert watch.in_row == 0


def test_parallel_group_rejects_unknown_keys():
    from pretrain.config import parallel_from_cfg
    from stack_common.errors import ConfigError

    assert parallel_from_cfg({"tp": 2, "pp": 2, "vpp": 2}).vpp == 2
    with pytest.raises(ConfigError, match="sequence_paralel"):
        parallel_from_cfg({"tp": 2, "sequence_paralel": True})


def test_slurm_environment_without_torchrun(monkeypatch):
    from pretrain.__main__ import export_slurm_env, first_host

    assert first_host("gpu[012-015,020],cpu1") == "gpu012"
    assert first_host("node7,node8") == "node7"
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(key, "")   # recorded, so the values exported below are undone afterwards
        monkeypatch.delenv(key)
    monkeypatch.setenv("SLURM_PROCID", "5")
    monkeypatch.setenv("SLURM_NTASKS", "16")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu[3-4]")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    export_slurm_env()
    import os

    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["LOCAL_RANK"]) == ("5", "16", "1")
    assert os.environ["MASTER_ADDR"] == "gpu3" and os.environ["MASTER_PORT"] == str(20000 + 4242)


@pytest.mark.parametrize("groups", [
    ["model=baichuan2_7b", "optimizer=baichuan2_7b", "training=baichuan2_7b", "parallel=tp2"],
    ["model=baichuan2_13b", "optimizer=baichuan2_13b", "hydra/launcher=submitit_slurm"],
])
def test_shipped_configs_compose_and_type_check(groups):
    from hydra import compose, initialize_config_dir

    from pretrain.config import (CheckpointConfig, DataConfig, LoggingConfig, OptimizerConfig,
                                 TrainingConfig, parallel_from_cfg)
    from stack_common.config import config_dir, to_dataclass

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name="pretrain", overrides=groups, return_hydra_config=True)
    opt = to_dataclass(cfg.optimizer, OptimizerConfig)
    assert (opt.beta1, opt.beta2, opt.eps, opt.weight_decay, opt.clip_grad) == (0.9, 0.95, 1e-8, 0.1, 0.5)
    assert opt.lr == (2e-4 if "model=baichuan2_7b" in groups else 1.5e-4)
    for node, cls in ((cfg.training, TrainingConfig), (cfg.data, DataConfig),
                      (cfg.checkpoint, CheckpointConfig), (cfg.logging, LoggingConfig)):
        to_dataclass(node, cls)
    assert parallel_from_cfg(cfg.parallel).tp == (2 if "parallel=tp2" in groups else 1)
    if "hydra/launcher=submitit_slurm" in groups:
        launcher = cfg.hydra.launcher
        assert launcher.nodes == 1 and launcher.gpus_per_node == 8 and launcher.tasks_per_node == 8
        assert launcher.timeout_min > 0


def test_split_leaving_a_dataset_without_validation_is_a_config_error(tmp_path):
    from pretrain.data import split_problems, write_token_dataset

    write_token_dataset(tmp_path / "small_text_document", [[5] * 40 + [2] for _ in range(10)], 8000)
    problems = split_problems([str(tmp_path / "small_text_document")], [98, 2, 0], 32, need_valid=True)
    assert len(problems) == 1 and "leaves 0 documents (0 tokens) for valid" in problems[0]
    assert split_problems([str(tmp_path / "small_text_document")], [80, 20, 0], 32, need_valid=True) == []
    assert split_problems([str(tmp_path / "small_text_document")], [98, 2, 0], 32, need_valid=False) == []


def test_resume_prefers_the_runs_own_checkpoint_over_checkpoint_load(tmp_path):
    from types import SimpleNamespace

    from pretrain.checkpointing import resume_source
    from stack_common.errors import ConfigError, UserError

    def fake_ckpt(d, meta):
        d.mkdir(parents=True)
        (d / "metadata.json").write_text("{}")
        (d / "meta.json").write_text(json.dumps(meta))
        return d

    imported = fake_ckpt(tmp_path / "hf_import" / "iter_0000000", {"iteration": 0, "imported_from": {"path": "x"}})
    released = fake_ckpt(tmp_path / "other_run" / "iter_0001000", {"iteration": 1000})
    run_dir = tmp_path / "run"
    cfg = SimpleNamespace(resume=True, load=str(imported), load_optimizer=True)
    assert resume_source(cfg, run_dir) == (imported, False)      # import-hf: weights only
    cfg.load = str(released)
    assert resume_source(cfg, run_dir) == (released, True)
    cfg.load_optimizer = False
    assert resume_source(cfg, run_dir) == (released, False)
    own = fake_ckpt(run_dir / "checkpoints" / "iter_0000050", {"iteration": 50})
    assert resume_source(cfg, run_dir) == (own, True)           # a requeued run continues itself
    cfg.resume = False
    assert resume_source(cfg, run_dir) == (released, False)
    # A run directory (or its checkpoints/) stands for its latest checkpoint.
    newer = fake_ckpt(tmp_path / "other_run" / "checkpoints" / "iter_0002000", {"iteration": 2000})
    for load in (tmp_path / "other_run", tmp_path / "other_run" / "checkpoints"):
        cfg.load = str(load)
        assert resume_source(cfg, run_dir) == (newer, False)
    cfg.load = str(tmp_path / "empty")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError) as err:
        resume_source(cfg, run_dir)
    assert err.value.problems == [f"checkpoint.load: {tmp_path}/empty has no meta.json "
                                  "(give an iter_* directory or a run directory)"]
    (newer / "meta.json").write_text("{not json")
    cfg.load, cfg.load_optimizer = str(newer), True
    with pytest.raises(UserError, match=f"^{newer}/meta.json: not readable JSON: "):
        resume_source(cfg, run_dir)


def test_flops_per_token_and_mfu_by_hand_for_the_7b_shape():
    """6 FLOPs per weight of every matmul (forward + backward; the input embedding is a lookup) plus causal
    attention, 6 x layers x hidden x seq (PaLM's 12 L h s, halved by the causal mask); MFU from a fixed step."""
    from types import SimpleNamespace

    from pretrain.monitoring import flops_per_token, throughput

    b7 = SimpleNamespace(hidden_size=4096, num_layers=32, num_attention_heads=32, num_query_groups=None,
                         ffn_hidden_size=11008)
    matmul_weights = 32 * (4 * 4096**2 + 3 * 4096 * 11008) + 4096 * 125696          # 6.99e9
    per_token = 6 * matmul_weights + 6 * 32 * 4096 * 4096
    assert per_token == 45_166_362_624
    assert flops_per_token(b7, 4096, 125696) == pytest.approx(per_token, rel=1e-12)
    # 8 nodes x 8 GPUs, global batch 1024 x 4096 tokens in 10 s, H100 bf16 dense peak 989 TFLOP/s
    rate = throughput(1024 * 4096, 10.0, per_token, 64, 989.0)
    assert rate["tokens_per_sec"] == pytest.approx(419_430.4, rel=1e-12)
    assert rate["tflops_per_device"] == pytest.approx(296.01, abs=0.01)
    assert rate["mfu"] == pytest.approx(0.2993, abs=1e-4)
    assert throughput(4096, 2.0, per_token, 1, None)["mfu"] is None
