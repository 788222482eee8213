"""The milestone schedule and the two seeds, without training: 220e9-style token counts, the
checks on them, which steps are kept (token milestones, every-N-tokens, log-spaced), and which
seed reaches megatron's dataset config and the process-group seeding."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

from pretrain.checkpointing import TrainState
from pretrain.config import CheckpointConfig, load_run_config, milestone_token_targets
from stack_common.config import config_dir, to_dataclass
from stack_common.errors import ConfigError
from test_pretrain_run import base_args, data_dir, latest, ok, pretrain, scalars  # noqa: F401 (data_dir: fixture)


def composed(tmp_path, *overrides: str):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name="pretrain", overrides=[f"checkpoint.dir={tmp_path / 'run'}",
                                                          "training.dry_run=true", "optimizer=tiny", *overrides])


def test_documented_220e9_milestones_type_check(tmp_path):
    (tmp_path / "ck.yaml").write_text("milestone_tokens: [220e9, 440e9]\nmilestone_every_tokens: 1.1e12\n")
    ck = to_dataclass(OmegaConf.load(tmp_path / "ck.yaml"), CheckpointConfig, where="checkpoint")
    assert milestone_token_targets(ck) == [220_000_000_000, 440_000_000_000]
    run = load_run_config(composed(tmp_path, "checkpoint.milestone_tokens=[220e9,2420e9]",
                                   "checkpoint.milestone_every_tokens=20e9"), world_size=1, model_given=True)
    assert milestone_token_targets(run.checkpoint) == [220 * 10**9, 2420 * 10**9]
    assert int(run.checkpoint.milestone_every_tokens) == 20 * 10**9


def test_fractional_or_negative_milestones_are_one_line_each(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_run_config(composed(tmp_path, "checkpoint.milestone_tokens=[220e9,2.5,-1e9]",
                                 "checkpoint.milestone_every_tokens=0.5", "checkpoint.milestone_log_steps=-1"),
                        world_size=1, model_given=True)
    assert err.value.problems == [
        "checkpoint.milestone_tokens[1]=2.5 must be a whole number of tokens > 0",
        "checkpoint.milestone_tokens[2]=-1000000000.0 must be a whole number of tokens > 0",
        "checkpoint.milestone_every_tokens=0.5 must be a whole number of tokens >= 0",
        "checkpoint.milestone_log_steps=-1 must be >= 0"]


def kept_steps(checkpoint: CheckpointConfig, steps: int, tokens_per_step: int) -> list[int]:
    """The steps the trainer keeps as milestones (its own rule), stepping its counters."""
    from pretrain.train import Trainer

    trainer = SimpleNamespace(run=SimpleNamespace(checkpoint=checkpoint), state=TrainState())
    kept = []
    for step in range(1, steps + 1):
        trainer.state.iteration, trainer.state.consumed_tokens = step, step * tokens_per_step
        if Trainer._milestone_reached(trainer):
            kept.append(step)
    return kept


def test_kept_steps_combine_token_milestones_every_n_tokens_and_log_spacing():
    ck = CheckpointConfig(milestone_tokens=[2500.0, 7e3], milestone_every_tokens=5e3, milestone_log_steps=8)
    # 1000 tokens a step: 2,500 is passed at step 3, 7,000 at 7; every 5,000 at 5, 10, 15, 20;
    # log-spaced 1, 2, 4, 8.
    assert kept_steps(ck, 20, 1000) == [1, 2, 3, 4, 5, 7, 8, 10, 15, 20]
    assert kept_steps(CheckpointConfig(milestone_log_steps=100), 130, 1) == [1, 2, 4, 8, 16, 32, 64]
    assert kept_steps(CheckpointConfig(), 50, 1000) == []


@pytest.mark.parametrize("seeds, data, init", [
    ([], 1234, 1234),                                             # old configs: one seed for both
    (["training.seed=5"], 5, 5),
    (["training.seed=5", "training.data_seed=11"], 11, 5),
    (["training.data_seed=11", "training.init_seed=7"], 11, 7),
])
def test_data_seed_and_init_seed(tmp_path, seeds, data, init):
    from pretrain.data import dataset_config

    run = load_run_config(composed(tmp_path, "data.weights=[1.0]", f"data.paths=[{tmp_path}/x_text_document]",
                                   "data.tokenizer.vocab_size=1000", *seeds), world_size=1, model_given=True)
    assert (run.data_seed, run.init_seed) == (data, init)
    assert dataset_config(run).random_seed == data


def test_a_run_resumes_from_its_step0_checkpoint_exactly(data_dir, tmp_path):
    """The step-0 checkpoint holds no optimizer state (megatron's DistributedOptimizer has none to
    describe before the first step); a run killed before its next save resumes from it and
    repeats steps 1-2 bit for bit."""
    run = tmp_path / "run"
    args = base_args(data_dir, run, 3) + ["training.eval_interval=0", "checkpoint.save_interval=0",
                                          "checkpoint.milestone_step0=true", "optimizer.distributed=true"]
    proc = pretrain(2, args + ["faults.inject_sigkill_after_iter=2"])
    assert proc.returncode != 0 and latest(run) == "iter_0000000", proc.stderr[-3000:]
    first = scalars(run, "train/lm_loss")
    ok(pretrain(2, args))
    again = scalars(run, "train/lm_loss")
    assert sorted(first) == [1, 2] and sorted(again) == [1, 2, 3]
    assert (again[1], again[2]) == (first[1], first[2])


def test_weights_loaded_without_optimizer_survive_the_first_bf16_step(data_dir, tmp_path):
    """bf16 keeps fp32 main weights in the optimizer, copied when it is built: a run that loads
    weights only (here the step-0 checkpoint of another run, under another init_seed) must
    train from the loaded weights, the same losses as the run that wrote them."""
    bf16 = ["training.precision=bf16", "training.eval_interval=0", "checkpoint.save_on_exit=false"]
    first = tmp_path / "first"
    ok(pretrain(1, base_args(data_dir, first, 3) + bf16 + ["checkpoint.milestone_step0=true"]))
    loaded = tmp_path / "loaded"
    ok(pretrain(1, base_args(data_dir, loaded, 3) + bf16 + [
        "training.init_seed=99", f"checkpoint.load={first}/checkpoints/iter_0000000"]))
    assert scalars(loaded, "train/lm_loss") == scalars(first, "train/lm_loss")
    assert sorted(scalars(first, "train/lm_loss")) == [1, 2, 3]
