"""End-to-end runs of `python -m pretrain` on CPU (gloo): exact resume after SIGKILL (TP=1,
TP=2 x PP=2, distributed optimizer), a crash in the middle of a save, SIGTERM requeue, NaN skip,
TensorBoard tags, layout change on load, config errors."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
VOCAB = 8000   # tiny_rope's vocabulary


MARKER = f"pretrain-test-{os.getpid()}"   # lets a test find the helper processes of its runs


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", BC_NO_PROGRESS="1", PYTHONPATH=str(REPO),
               BC_TEST_MARKER=MARKER)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """Two tiny encoded datasets with learnable structure (counting sequences) + encode summary."""
    from pretrain.data import write_token_dataset

    out = tmp_path_factory.mktemp("encoded")
    rng = np.random.default_rng(0)
    for name, step in (("en", 1), ("zh", 3)):
        docs = []
        for _ in range(300):
            start, length = int(rng.integers(3, 400)), int(rng.integers(10, 90))
            docs.append([3 + (start + step * i) % 500 for i in range(length)] + [2])
        write_token_dataset(out / f"{name}_text_document", docs, VOCAB)
    summary = {"tokenizer": {"model": None, "sha256": None, "vocab_size": VOCAB, "eod_id": 2}}
    (out / "encode_summary.json").write_text(json.dumps(summary))
    return out


def base_args(data_dir: Path, run_dir: Path, iters: int) -> list[str]:
    return [f"data.paths=[{data_dir}/en_text_document,{data_dir}/zh_text_document]",
            "data.weights=[0.6,0.4]", "model=tiny_rope", "model.seq_length=32",
            f"training.train_iters={iters}", "training.micro_batch_size=2",
            "training.global_batch_size=4", "training.eval_interval=4", "training.eval_iters=2",
            "optimizer=tiny", "optimizer.warmup_iters=2", f"checkpoint.dir={run_dir}",
            "checkpoint.save_interval=4", "checkpoint.keep_last=1", "logging.log_interval=1"]


def pretrain(nproc: int, args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    """Run the CLI; output goes through files, since a killed run's helper processes
    (dist_checkpointing's multiprocessing manager) would keep pipes open after it died."""
    import tempfile

    if nproc == 1:
        cmd = [sys.executable, "-m", "pretrain", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
               f"--master-port={_free_port()}", "-m", "pretrain", *args]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        code = subprocess.run(cmd, cwd=REPO, env=_env(), stdout=out, stderr=err, timeout=timeout).returncode
        out.seek(0), err.seek(0)
        result = subprocess.CompletedProcess(cmd, code, out.read(), err.read())
    if code != 0:
        end_orphans()
    return result


def end_orphans() -> None:
    """Terminate the helper processes that a SIGKILLed run of this test session left behind."""
    import psutil

    for proc in psutil.process_iter(["pid", "ppid"]):
        try:
            if proc.info["ppid"] == 1 and proc.environ().get("BC_TEST_MARKER") == MARKER:
                proc.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass


def scalars(run_dir: Path, tag: str) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    return {e.step: e.value for e in acc.Scalars(tag)} if tag in acc.Tags()["scalars"] else {}


def latest(run_dir: Path) -> str:
    return (run_dir / "checkpoints" / "latest").read_text().strip()


def ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]


# ----------------------------------------------------------------------------- TP=1

def test_tp1_nan_tags_crash_in_save_and_exact_resume(data_dir, tmp_path):
    """One run of 12 steps is killed in the middle of its save at step 8 (after logging steps
    1-8); the resumed run redoes 5-8 from iter_4 and must match the first run bitwise."""
    from pretrain.monitoring import TRAIN_TAGS, VALID_TAGS

    run = tmp_path / "run"
    args = base_args(data_dir, run, 12) + ["faults.inject_nan_iters=[3]", "logging.peak_tflops=0.5"]
    proc = pretrain(1, args + ["faults.inject_sigkill_in_save_iter=8"])
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert latest(run) == "iter_0000004"
    assert (run / "checkpoints" / ".iter_0000008.tmp").is_dir()
    assert not (run / "checkpoints" / "iter_0000008").exists()
    first = scalars(run, "train/lm_loss")
    first_norm = scalars(run, "train/grad_norm")
    assert sorted(first) == [1, 2, 4, 5, 6, 7, 8]       # the NaN at 3 is skipped, not plotted

    # Auto-resume picks iter_4, removes the torn save, and continues to the same numbers bitwise.
    proc = pretrain(1, args)
    ok(proc)
    assert "loaded" in proc.stderr and "iter_0000004" in proc.stderr
    assert not (run / "checkpoints" / ".iter_0000008.tmp").exists()
    lm = scalars(run, "train/lm_loss")
    assert sorted(lm) == [1, 2, 4, 5, 6, 7, 8, 9, 10, 11, 12]
    for it in range(5, 9):
        assert lm[it] == first[it], f"iteration {it}: {lm[it]} != {first[it]}"
        assert scalars(run, "train/grad_norm")[it] == first_norm[it]

    # Every documented tag is there with sane values; the NaN step is counted.
    for tag in TRAIN_TAGS + VALID_TAGS:
        assert scalars(run, tag), f"missing TensorBoard tag {tag}"
    assert scalars(run, "train/skipped_steps")[12] == 1
    assert scalars(run, "progress/consumed_tokens")[12] == 12 * 4 * 32
    assert scalars(run, "progress/consumed_samples")[12] == 48
    lr = scalars(run, "train/learning_rate")
    assert lr[1] == 0.0 and lr[2] == pytest.approx(1.5e-3, rel=1e-6)          # linear warmup
    assert lr[4] == pytest.approx(3e-3, rel=1e-6) and 3e-4 < lr[12] < lr[8] < lr[4]   # cosine
    valid = scalars(run, "valid/lm_loss")
    assert sorted(valid) == [0, 4, 8, 12] and valid[12] < valid[0]
    assert scalars(run, "valid/perplexity")[12] == pytest.approx(math.exp(valid[12]), rel=1e-5)
    # Throughput from each measured step time: 4 x 32 tokens, tiny_rope's FLOPs per token by hand (6 per
    # matmul weight, output layer over the 8064 padded rows, + 6 L h s causal attention), MFU of 0.5 TFLOP/s.
    per_token = 6 * (4 * (4 * 64**2 + 3 * 64 * 176) + 64 * 8064) + 6 * 4 * 64 * 32
    step, rate = scalars(run, "time/step_seconds"), scalars(run, "throughput/tokens_per_sec")
    tflops, mfu = scalars(run, "throughput/tflops_per_device"), scalars(run, "throughput/mfu")
    for it in lm:
        assert rate[it] == pytest.approx(4 * 32 / step[it], rel=1e-5)
        assert tflops[it] == pytest.approx(rate[it] * per_token / 1e12, rel=1e-5)
        assert mfu[it] == pytest.approx(tflops[it] / 0.5, rel=1e-5) and mfu[it] > 0
    assert 0 < scalars(run, "train/grad_norm")[12] < 100 and lm[12] < lm[1]
    assert scalars(run, "train/param_norm")[12] > 0

    meta = json.loads((run / "checkpoints" / "iter_0000012" / "meta.json").read_text())
    assert meta["iteration"] == 12 and meta["consumed_samples"] == 48
    assert meta["consumed_tokens"] == 12 * 4 * 32 and meta["tp"] == 1 and meta["dp"] == 1
    assert meta["vocab_size"] == VOCAB and meta["padded_vocab_size"] == 8064
    assert meta["tokenizer"]["vocab_size"] == VOCAB and meta["model"]["num_layers"] == 4
    assert meta["config"]["training"]["train_iters"] == 12 and meta["keep"] is False
    # keep_last=1: the rolling iter_4 is pruned once iter_12 is published.
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["iter_0000012", "latest"]


def test_sigterm_saves_and_exits_with_requeue_code(data_dir, tmp_path):
    run = tmp_path / "run"
    args = base_args(data_dir, run, 400) + ["training.eval_interval=0", "checkpoint.save_interval=0",
                                            "training.requeue_exit_code=3"]
    proc = subprocess.Popen([sys.executable, "-m", "pretrain", *args], cwd=REPO, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        for line in proc.stdout:
            if "iteration        2/" in line:
                proc.send_signal(signal.SIGTERM)
                break
        proc.stdout.read()
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        end_orphans()
    assert code == 3
    name = latest(run)
    meta = json.loads((run / "checkpoints" / name / "meta.json").read_text())
    assert 2 <= meta["iteration"] < 400 and name == f"iter_{meta['iteration']:07d}"
    assert meta["consumed_samples"] == 4 * meta["iteration"]


# ----------------------------------------------------------------------------- TP=2 x PP=2

def killed_then_resumed(nproc: int, args: list[str]) -> tuple[dict, dict]:
    """Run 8 steps, SIGKILL every rank after step 7 (checkpoint at 4), resume to 8.
    Returns the lm losses of the first run and of the run directory after the resume."""
    proc = pretrain(nproc, args + ["faults.inject_sigkill_after_iter=7"])
    run = Path(next(a.split("=", 1)[1] for a in args if a.startswith("checkpoint.dir=")))
    assert proc.returncode != 0 and latest(run) == "iter_0000004", proc.stderr[-3000:]
    first = scalars(run, "train/lm_loss")
    assert sorted(first) == list(range(1, 8))
    ok(pretrain(nproc, args))
    return first, scalars(run, "train/lm_loss")


def test_tp2_pp2_exact_resume_after_sigkill_and_layout_change(data_dir, tmp_path):
    run, moved = tmp_path / "run", tmp_path / "moved"
    args = base_args(data_dir, run, 8) + ["parallel=tp2_pp2", "training.eval_interval=0",
                                          "checkpoint.milestone_tokens=[512]"]
    first, resumed = killed_then_resumed(4, args)
    for it in range(5, 8):
        assert resumed[it] == first[it], f"iteration {it}: {resumed[it]} != {first[it]}"
    # iter_4 is a token milestone (4 x 4 x 32 = 512 tokens): kept for good, never pruned.
    assert json.loads((run / "checkpoints" / "iter_0000004" / "meta.json").read_text())["keep"] is True
    assert latest(run) == "iter_0000008"

    # The TP=2 x PP=2 checkpoint loads into TP=1 (model, optimizer, schedule, data position).
    ok(pretrain(1, base_args(data_dir, moved, 8) + [
        "training.eval_interval=0", f"checkpoint.load={run}/checkpoints/iter_0000004"]))
    moved_lm = scalars(moved, "train/lm_loss")
    assert sorted(moved_lm) == [5, 6, 7, 8]
    for it in range(5, 9):
        assert moved_lm[it] == pytest.approx(resumed[it], abs=1e-5)


# ----------------------------------------------------------------------------- distributed optimizer

def test_distributed_optimizer_exact_resume_after_sigkill(data_dir, tmp_path):
    run = tmp_path / "run"
    args = base_args(data_dir, run, 8) + ["optimizer.distributed=true", "training.eval_interval=0"]
    first, resumed = killed_then_resumed(2, args)
    for it in range(5, 8):
        assert resumed[it] == first[it], f"iteration {it}: {resumed[it]} != {first[it]}"
    meta = json.loads((run / "checkpoints" / "iter_0000008" / "meta.json").read_text())
    assert meta["dp"] == 2 and meta["config"]["optimizer"]["distributed"] is True


# ----------------------------------------------------------------------------- config

def test_config_errors_one_line_each_before_training(data_dir, tmp_path):
    args = base_args(data_dir, tmp_path / "bad", 10)
    args += ["parallel.tp=3", "parallel.pp=3", "training.global_batch_size=5",
             "data.tokenizer.vocab_size=9000", f"data.paths=[{data_dir}/missing_text_document]"]
    proc = pretrain(1, args, timeout=120)
    assert proc.returncode == 2
    lines = [l for l in proc.stderr.splitlines() if l.startswith("config error:")]
    expected = ["does not divide model.num_attention_heads=4", "does not divide model.num_layers=4",
                "world size 1 is not divisible by tp x pp = 9",
                "training.global_batch_size=5 is not divisible by micro_batch_size",
                "missing_text_document.bin", "missing_text_document.idx",
                "tokenizer vocabulary 9000 does not fit model.vocab_size=8000",
                "data.weights has 2 entries for 1 data.paths"]
    for text in expected:
        assert sum(text in l for l in lines) == 1, (text, proc.stderr)
    assert len(lines) == len(expected), proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "bad" / "checkpoints").exists()


def dry_run_figures(stdout: str) -> tuple[float, float]:
    """(parameters in millions, total memory per rank in GiB) from the dry run's report."""
    import re

    params = re.search(r"^parameters: ([\d,.]+)M total", stdout, flags=re.M)
    memory = re.search(r"^memory per rank \(estimate\):.* total ([\d.]+) GiB", stdout, flags=re.M)
    assert params and memory, stdout
    return float(params.group(1).replace(",", "")), float(memory.group(1))


@pytest.mark.parametrize("model,parallel,layers,hidden,ffn,ranks_share", [
    ("baichuan2_7b", "tp2", 32, 4096, 11008, lambda layer_params, embed: (layer_params + 2 * embed) / 2),
    # pp=2: the largest rank holds half the layers and one of the two embeddings
    ("baichuan2_13b", "tp2_pp2", 40, 5120, 13696, lambda layer_params, embed: (layer_params / 2 + embed) / 2)])
def test_dry_run_reports_the_hand_counted_parameters_and_memory(data_dir, tmp_path, model, parallel, layers,
                                                                hidden, ffn, ranks_share):
    proc = pretrain(1, base_args(data_dir, tmp_path / "dry", 10) + [
        "training.dry_run=true", f"model={model}", f"parallel={parallel}", "optimizer.distributed=false"],
        timeout=120)
    ok(proc)
    params, gib = dry_run_figures(proc.stdout)
    # Per layer: q, k, v, o (4 h^2), SwiGLU gate, up, down (3 h ffn), two RMSNorm weights; untied input
    # and output embeddings of the 125,696-row vocabulary (a multiple of 128 x tp: no padding); final norm.
    layer_params = layers * (4 * hidden**2 + 3 * hidden * ffn + 2 * hidden)
    embed = 125_696 * hidden
    assert abs(params - (layer_params + 2 * embed + hidden) / 1e6) < 1.0        # to the million
    # bf16 weights (2 B) + fp32 main grads (4 B) + fp32 master weights and Adam moments (12 B) per parameter
    # of the largest rank; activations at 32 tokens x 2 sequences are negligible (< 1%).
    assert gib == pytest.approx(ranks_share(layer_params, embed) * 18 / 2**30, rel=0.05)


def test_cfg_job(data_dir, tmp_path):
    proc = pretrain(1, base_args(data_dir, tmp_path / "dry", 10) + ["--cfg", "job"], timeout=120)
    ok(proc)
    assert "train_iters: 10" in proc.stdout and "tiny_rope" in proc.stdout


def test_too_many_nonfinite_losses_in_a_row_stop_with_a_checkpoint(data_dir, tmp_path):
    run = tmp_path / "run"
    proc = pretrain(1, base_args(data_dir, run, 10) + [
        "training.eval_interval=0", "faults.inject_nan_iters=[2,3]",
        "training.max_consecutive_nonfinite=2"])
    assert proc.returncode == 2
    assert "error: 2 non-finite losses or grad norms in a row at iteration 3" in proc.stderr
    assert "Traceback" not in proc.stderr
    meta = json.loads((run / "checkpoints" / latest(run) / "meta.json").read_text())
    assert meta["iteration"] == 3 and meta["train_state"]["skipped_iters"] == 2
