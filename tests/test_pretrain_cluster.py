"""Cluster code paths on CPU (gloo): checkpoints across TransformerEngine and local layers
(`_extra_state`), the final norm under apex, ranks agreeing on the device and on `latest`,
GPU index under Slurm binding, SIGUSR2 and the time limit on a real training process, and
training.device=cuda without CUDA."""
from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from tests._dist_helpers import init_layout, launch, tiny_model_config
from tests.test_pretrain_run import (REPO, _env, base_args, data_dir, end_orphans, latest,  # noqa: F401
                                     pretrain)


# ----------------------------------------------------------------------------- _extra_state

def _with_extra_state(model, value: float):
    """Give every layer's core attention an `_extra_state` as TransformerEngine's has (the
    local spec's attention has none; its linear layers save theirs as None, as TE's load)."""
    from pretrain.model import unwrap

    for layer in unwrap(model).decoder.layers:
        module = layer.self_attention.core_attention
        cls = type(module)

        class WithExtra(cls):
            def get_extra_state(self):
                return self.extra

            def set_extra_state(self, state):
                if state is not None:     # as TE: None (a local checkpoint's) changes nothing
                    self.extra = state

        module.__class__ = WithExtra
        module.extra = torch.tensor([value])
    return model


def _with_bogus_weight(model):
    """A weight no checkpoint of the architecture has (stands for any real key mismatch)."""
    from pretrain.model import unwrap

    for layer in unwrap(model).decoder.layers:
        layer.self_attention.linear_proj.register_parameter("bogus", torch.nn.Parameter(torch.zeros(3)))
    return model


def _extra_state_rank(rank, world, root):
    from pretrain.checkpointing import CheckpointManager, TrainState
    from pretrain.model import build_model, unwrap
    from stack_common.errors import UserError

    init_layout(1, 1)
    cfg = tiny_model_config(num_layers=2)

    def fresh(seed, extra=None, bogus=False):
        torch.manual_seed(seed)
        model = build_model(cfg)
        if extra is not None:
            _with_extra_state(model[0], extra)
        if bogus:
            _with_bogus_weight(model[0])
        return model

    def save(model, name):
        meta = lambda state, keep: {"iteration": 0, "tp": 1, "pp": 1, "vpp": None, "dp": 1}  # noqa: E731
        return CheckpointManager(Path(root) / name, 1, meta).save(model, None, None, TrainState())

    def load(model, ckpt):
        CheckpointManager(Path(root) / "loads", 1, None).load(
            ckpt, model, None, None, layout={"tp": 1, "pp": 1, "vpp": None, "dp": 1})
        return model

    def weights(model):
        return {k: v.clone() for k, v in unwrap(model[0]).state_dict().items() if "_extra_state" not in k}

    te_model, plain_model = fresh(1, extra=7.0), fresh(2)
    te_ckpt, plain_ckpt = save(te_model, "te"), save(plain_model, "plain")
    out = {"te_keys": sorted(k for k in unwrap(te_model[0]).state_dict() if "core_attention._extra" in k)}
    # TE checkpoint into local layers, local checkpoint into TE layers, TE into TE.
    out["te_into_plain"] = all(torch.equal(a, b) for a, b in
                               zip(weights(load(fresh(3), te_ckpt)).values(), weights(te_model).values()))
    te_target = load(fresh(4, extra=-1.0), plain_ckpt)
    out["plain_into_te"] = all(torch.equal(a, b) for a, b in
                               zip(weights(te_target).values(), weights(plain_model).values()))
    out["plain_into_te_extra"] = float(unwrap(te_target[0]).decoder.layers[0].self_attention.core_attention.extra)
    te_again = load(fresh(5, extra=-1.0), te_ckpt)
    out["te_into_te_extra"] = float(unwrap(te_again[0]).decoder.layers[1].self_attention.core_attention.extra)
    # Any other key missing on either side is an error naming it.
    for name, model, ckpt in (("model_has_more", fresh(6, bogus=True), plain_ckpt),
                              ("ckpt_has_more", fresh(7), save(fresh(8, bogus=True), "bogus"))):
        try:
            load(model, ckpt)
            out[name] = None
        except UserError as err:
            out[name] = str(err)
    return out


def test_extra_state_differs_others_fail(one_rank):
    out, tmp_path = one_rank["extra_state"], Path(one_rank["root"]) / "extra"
    assert out["te_keys"] == [f"decoder.layers.{i}.self_attention.core_attention._extra_state" for i in (0, 1)]
    assert out["te_into_plain"] and out["plain_into_te"]
    assert out["plain_into_te_extra"] == -1.0     # nothing to load: the module keeps its own
    assert out["te_into_te_extra"] == 7.0         # saved and restored between TE builds
    assert out["model_has_more"] is not None
    assert "1 key(s) the model needs are not in the checkpoint: decoder.layers.self_attention.linear_proj.bogus" \
        in out["model_has_more"] and str(tmp_path / "plain") in out["model_has_more"]
    assert out["ckpt_has_more"] is not None
    assert "1 checkpoint key(s) the model does not have: decoder.layers.self_attention.linear_proj.bogus" \
        in out["ckpt_has_more"]


# ----------------------------------------------------------------------------- final norm under apex

def _apex_norm_rank(rank, world):
    init_layout(1, 1)
    from megatron.core.fusions.fused_layer_norm import FusedLayerNorm
    from megatron.core.transformer import transformer_block

    from pretrain.model import build_model, unwrap

    # An image with apex and without TE: megatron's default final norm is apex's FusedLayerNorm.
    default, transformer_block.LayerNormImpl = transformer_block.LayerNormImpl, FusedLayerNorm
    try:
        model = build_model(tiny_model_config(num_layers=2))
    finally:
        transformer_block.LayerNormImpl = default
    norm = unwrap(model[0]).decoder.final_layernorm
    try:
        build_model(tiny_model_config("alibi", num_layers=2, attention_backend="flash"))
        flash = None
    except RuntimeError as err:
        flash = str(err)
    return type(norm).__name__, isinstance(norm, FusedLayerNorm), flash


def test_final_norm_is_never_apex_fused_layer_norm(one_rank):
    name, is_apex, flash = one_rank["apex"]
    assert not is_apex and name == "RMSNorm"
    # flash-attn (ALiBi by slopes) says where it cannot run instead of falling back silently.
    assert flash.startswith("model.attention_backend=flash needs CUDA (flash-attn kernels); use sdpa on the CPU")


# ----------------------------------------------------------------------------- device agreement

def _agree(devices: list[str]) -> list:
    from pretrain.parallel import agree_on_device

    store = torch.distributed.HashStore()
    results = [None] * len(devices)

    def one(rank):
        try:
            agree_on_device(store, rank, len(devices), devices[rank])
            results[rank] = "ok"
        except Exception as err:  # noqa: BLE001 - the test reads the message
            results[rank] = str(err)

    threads = [threading.Thread(target=one, args=(r,)) for r in range(len(devices))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return results


def test_ranks_agree_on_the_device_or_all_fail():
    assert _agree(["cpu", "cpu", "cpu"]) == ["ok"] * 3
    assert _agree(["cuda", "cuda"]) == ["ok"] * 2
    results = _agree(["cuda", "cpu", "cuda"])
    for rank, msg in enumerate(results):
        assert "ranks disagree on the device: 2 of 3 see CUDA, 1 run on the CPU" in msg, msg
        assert f"this is rank {rank}, on {['cuda', 'cpu', 'cuda'][rank]}" in msg


def test_local_gpu_index_wraps_at_the_visible_count(monkeypatch):
    from pretrain.parallel import local_device_index

    monkeypatch.setenv("LOCAL_RANK", "5")
    assert local_device_index(8) == 5
    assert local_device_index(4) == 1
    assert local_device_index(1) == 0     # Slurm binding one GPU per task


def test_gpu_index_falls_back_to_rank_when_local_rank_is_unset(monkeypatch):
    """A process started without LOCAL_RANK (RANK=3) binds GPU 3, not GPU 0."""
    import pretrain.cpu_compat
    from pretrain.parallel import init_distributed

    chosen = []

    def set_device(index):
        chosen.append(index)
        raise RuntimeError("stop after binding the device")

    for name, value in (("RANK", "3"), ("WORLD_SIZE", "4"), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "1")):
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(pretrain.cpu_compat, "apply_if_needed", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "set_device", set_device)
    with pytest.raises(RuntimeError, match="stop after binding the device"):
        init_distributed(device="cuda")
    assert chosen == [3]


# ----------------------------------------------------------------------------- rank 0 reads latest

def _fake_checkpoint(root: Path, iteration: int) -> None:
    ckpt = root / "checkpoints" / f"iter_{iteration:07d}"
    ckpt.mkdir(parents=True)
    (ckpt / "meta.json").write_text(json.dumps({"iteration": iteration}))
    (ckpt / "metadata.json").write_text("{}")
    (root / "checkpoints" / "latest").write_text(ckpt.name + "\n")


def _resume_rank(rank, world, run_dirs, loads):
    init_layout(1, 1)
    from pretrain.checkpointing import agreed_resume_source
    from pretrain.config import CheckpointConfig
    from stack_common.errors import ConfigError

    ck = CheckpointConfig(dir=run_dirs[rank], load=loads[rank])
    try:
        source, with_optimizer = agreed_resume_source(ck, run_dirs[rank])
        return str(source), with_optimizer
    except ConfigError as err:
        return "error", str(err)


def test_rank0_resolves_latest_for_every_rank(two_ranks):
    # Rank 1 sees an older `latest` (a stale NFS attribute cache, here another directory).
    tmp_path = Path(two_ranks[0]["root"])
    fresh = tmp_path / "fresh"
    assert [r["resume"] for r in two_ranks] == [(str(fresh / "checkpoints" / "iter_0000008"), True)] * 2
    # Rank 0's config problem is every rank's (no rank goes on alone).
    results = [r["resume_error"] for r in two_ranks]
    assert [r[0] for r in results] == ["error", "error"]
    assert all(f"checkpoint.load: path does not exist: {tmp_path / 'nowhere'}" in r[1] for r in results)


# ----------------------------------------------------------------------------- signals and time limit

REQUEUE_HANDLER = """
import signal, sys
from pathlib import Path

MARKER, RUN = Path({marker!r}), Path({run!r})


def requeue(signum, frame):   # what submitit's SIGUSR2 handler does: requeue, then exit
    MARKER.write_text((RUN / "checkpoints" / "latest").read_text())
    sys.exit(7)


if __name__ == "__main__":   # not in the helper processes that spawn imports this into
    signal.signal(signal.SIGUSR2, requeue)
    from pretrain.__main__ import main
    main()
"""


def test_a_signal_on_rank_0_only_stops_both_ranks(two_ranks):
    assert [r["signal_one_rank"] for r in two_ranks] == [
        (None, "signal", ["SIGUSR2"], [signal.SIGUSR2]), (None, "signal", [], [])]


def test_sigusr2_saves_then_hands_over_to_the_requeue_handler(data_dir, tmp_path):  # noqa: F811
    run, marker = tmp_path / "run", tmp_path / "requeued"
    args = base_args(data_dir, run, 400) + ["training.eval_interval=0", "checkpoint.save_interval=0"]
    script = tmp_path / "launch.py"
    script.write_text(REQUEUE_HANDLER.format(marker=str(marker), run=str(run)))
    proc = subprocess.Popen([sys.executable, str(script), *args], cwd=REPO, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in proc.stdout:
            if "iteration        2/" in line:
                proc.send_signal(signal.SIGUSR2)
                break
        tail = proc.stdout.read()
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        end_orphans()
    assert code == 7, tail[-3000:]                     # the previous handler ran, after the save:
    name = latest(run)
    assert marker.read_text().strip() == name          # it saw the checkpoint published
    meta = json.loads((run / "checkpoints" / name / "meta.json").read_text())
    assert 2 <= meta["iteration"] < 400 and meta["consumed_samples"] == 4 * meta["iteration"]
    assert meta["layer_build"] == {"spec": "local", "final_norm": "WrappedTorchNorm",
                                   "core_attention": "SDPAttention"}


def test_exit_duration_saves_and_exits_with_the_requeue_code(data_dir, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    proc = pretrain(2, base_args(data_dir, run, 400) + [
        "training.eval_interval=0", "checkpoint.save_interval=0", "training.exit_duration_mins=0.0001"])
    # torchrun exits with 1 and names the ranks' own code.
    assert proc.returncode == 1 and "exitcode  : 3" in proc.stderr, proc.stderr[-3000:]
    assert latest(run) == "iter_0000001"                # time is up at the first check, on both ranks
    assert "training.exit_duration_mins=0.0001 reached" in proc.stdout + proc.stderr


def test_device_cuda_without_cuda_fails_with_one_line(data_dir, tmp_path):  # noqa: F811
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    proc = pretrain(1, base_args(data_dir, tmp_path / "run", 4) + ["training.device=cuda"], timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("config error:")]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "training.device=cuda but this process sees no CUDA device" in lines[0]
    assert "Traceback" not in proc.stderr and not (tmp_path / "run" / "checkpoints").exists()


# ----------------------------------------------------------------------------- distributed optimizer

def test_distributed_optimizer_checkpoint_moves_from_dp2_to_tp2(data_dir, tmp_path):  # noqa: F811
    """Saved at TP=1 x DP=2, resumed at TP=2 x DP=1: Adam moments and schedule continue."""
    run, moved = tmp_path / "run", tmp_path / "moved"
    common = ["optimizer.distributed=true", "training.eval_interval=0", "checkpoint.milestone_tokens=[512]"]
    proc = pretrain(2, base_args(data_dir, run, 8) + common)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from tests.test_pretrain_run import scalars

    first = scalars(run, "train/lm_loss")
    proc = pretrain(2, base_args(data_dir, moved, 8) + common + [
        "parallel=tp2", f"checkpoint.load={run}/checkpoints/iter_0000004"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = scalars(moved, "train/lm_loss")
    assert sorted(resumed) == [5, 6, 7, 8]
    for it in range(5, 9):
        assert resumed[it] == pytest.approx(first[it], abs=1e-5), it
    meta = json.loads((moved / "checkpoints" / "iter_0000008" / "meta.json").read_text())
    assert (meta["tp"], meta["dp"]) == (2, 1)


# ----------------------------------------------------------------------------- module layout

def _pretrain_imports() -> dict[str, set[str]]:
    """pretrain module -> the pretrain modules it imports (at top level or inside functions;
    not under `if TYPE_CHECKING`)."""
    import ast

    modules = {}
    for path in (REPO / "pretrain").rglob("*.py"):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = path
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                node.body = []
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        found = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                found |= {base} | {f"{base}.{a.name}" for a in node.names}
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def test_pretrain_modules_import_without_cycles():
    import importlib

    graph = _pretrain_imports()
    assert {"pretrain.config", "pretrain.data", "pretrain.parallelize", "pretrain.estimate",
            "pretrain.model.gpt", "pretrain.model.loss", "pretrain.optim"} <= set(graph)
    for name in graph:
        importlib.import_module(name)
    cycles, state = [], {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []
    # The model definition knows nothing of its data-parallel wrapping or of the trainer.
    model_imports = set().union(*(graph[m] for m in graph if m.startswith("pretrain.model")))
    assert model_imports <= {m for m in graph if m.startswith("pretrain.model")} | {"pretrain.mcore_compat"}
    model_source = "".join(p.read_text() for p in (REPO / "pretrain" / "model").glob("*.py"))
    assert "megatron.core.distributed" not in model_source and "DistributedDataParallel" not in model_source


# ----------------------------------------------------------------------------- EOD masking

def compose_run(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from pretrain.config import load_run_config
    from stack_common.config import config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("pretrain", overrides=overrides)
    return load_run_config(cfg, world_size=1, model_given=True)


def _eod_rank(rank, world, root):
    init_layout(1, 1)
    from pretrain.data import build_datasets, write_token_dataset
    from pretrain.model import build_model

    docs = [[3 + (7 * d + i) % 900 for i in range(5 + (d * 5) % 9)] + [2] for d in range(40)]
    prefix = write_token_dataset(Path(root) / "docs", docs, 1000)
    out = {}
    for position in ("rope", "alibi"):
        run = compose_run([f"model=tiny_{position}", "model.seq_length=32", "model.vocab_size=1000",
                           f"data.paths=[{prefix}]", "data.tokenizer.vocab_size=1000", "data.split=[100,0,0]",
                           "data.reset_attention_mask=true", "data.reset_position_ids=true",
                           "training.eval_interval=0", "training.train_iters=2", "training.global_batch_size=2",
                           "optimizer=tiny", "optimizer.warmup_iters=0", f"checkpoint.dir={root}/run_{position}"])
        train, _ = build_datasets(run)
        sample = train[1]
        tokens = torch.as_tensor(sample["tokens"])[None]
        torch.manual_seed(0)
        model = build_model(run.model)[0].eval()
        with torch.no_grad():
            packed = model(tokens, torch.as_tensor(sample["position_ids"])[None],
                           torch.as_tensor(sample["attention_mask"])[None])[0]
            unmasked = model(tokens, torch.arange(32)[None], None)[0]
            # Both position encodings are relative (and megatron builds RoPE from the sequence
            # length): restarted position ids change nothing, the mask does it all.
            unreset = model(tokens, torch.arange(32)[None], torch.as_tensor(sample["attention_mask"])[None])[0]
            ends = [i + 1 for i, t in enumerate(tokens[0].tolist()) if t == 2 and i + 1 < 32]
            starts = [0] + ends
            worst, masked_off = 0.0, 0.0
            for a, b in zip(starts, ends + [32]):
                alone = model(tokens[:, a:b], torch.arange(b - a)[None], None)[0]
                worst = max(worst, (packed[a:b] - alone).abs().max().item())
                masked_off = max(masked_off, (unmasked[a:b] - alone).abs().max().item())
        out[position] = {"starts": starts, "positions_at_starts": [int(sample["position_ids"][a]) for a in starts],
                         "worst": worst, "without_mask": masked_off,
                         "reset_ids_change": (packed - unreset).abs().max().item()}
    # The DataLoader with worker processes feeds exactly the batches read in the process.
    from pretrain.data import microbatches

    inline = list(microbatches(train, 0, 1, 1, 2))
    workers = list(microbatches(train, 0, 1, 1, 2, num_workers=2))
    out["loader"] = (len(inline), len(workers), all(
        all(torch.equal(a[k], b[k]) for k in a) and a.keys() == b.keys() for a, b in zip(inline, workers)))
    return out


def test_eod_masking_matches_each_document_run_alone(one_rank):
    out = dict(one_rank["eod"])
    n_inline, n_workers, same = out.pop("loader")
    assert n_inline == n_workers > 0 and same
    for position, r in out.items():
        assert len(r["starts"]) >= 3, r                    # the window packs several documents
        assert r["positions_at_starts"] == [0] * len(r["starts"])
        assert r["worst"] < 1e-5, (position, r)            # each document's logits as if alone
        assert r["without_mask"] > 1e-3, (position, r)     # and the mask is what makes it so
        assert r["reset_ids_change"] == 0.0, (position, r)  # data.reset_position_ids: no effect


# ----------------------------------------------------------------------------- per-stage seeds

def _stage_seed_rank(rank, world):
    init_layout(1, 3, seed=1234)
    from pretrain.model import build_model, unwrap
    from pretrain.parallel import set_stage_seed

    def first_layer():
        chunk = unwrap(build_model(tiny_model_config(num_layers=3), pp=3)[0])
        return chunk.decoder.layers[0].mlp.linear_fc1.weight.detach().clone()

    weight = first_layer()
    seed = set_stage_seed(1234)
    return seed, weight, torch.equal(first_layer(), weight)


def test_pipeline_stages_draw_their_own_reproducible_init():
    results = launch(3, _stage_seed_rank)
    # Stages 1 and 2 draw their transformer layer first (stage 0 its embedding): with one
    # shared seed they would start identical.
    assert not torch.equal(results[1][1], results[2][1])
    assert [r[0] for r in results] == [1234, 1334, 1434]
    assert all(r[2] for r in results)                     # same seed, same weights


# ----------------------------------------------------------------------------- recompute and fusions

def _recompute_rank(rank, world):
    init_layout(1, 1)
    from pretrain.parallelize import build_parallel_model
    from tests._dist_helpers import build_optimizer, global_batches, microbatches

    cfg = tiny_model_config(num_layers=2)
    data = global_batches(2, 2, cfg.seq_length, cfg.vocab_size)
    out = {}
    for recompute in (False, "selective", "full"):
        torch.manual_seed(5)
        chunks = build_parallel_model(cfg, recompute=recompute)
        optimizer = build_optimizer(chunks)
        from pretrain.step import train_step

        steps = [train_step(chunks, optimizer, microbatches(b, 2, 0, 1), 1, 2, cfg.seq_length) for b in data]
        out[str(recompute)] = [(m["lm_loss"], m["grad_norm"]) for m in steps]
        out[f"{recompute}_granularity"] = chunks[0].config.recompute_granularity
    return out


def test_selective_and_full_recompute_train_the_same_steps(one_rank):
    out = one_rank["recompute"]
    assert (out["False_granularity"], out["selective_granularity"], out["full_granularity"]) == \
        (None, "selective", "full")
    assert out["selective"] == out["False"] and out["full"] == out["False"]


def test_fusions_only_on_gpu_and_only_with_their_kernels(monkeypatch):
    from pretrain.model import ModelConfig
    from pretrain.model import config as model_config

    rope, alibi = ModelConfig(), ModelConfig(position_embedding_type="alibi")
    assert not any(model_config.fusion_flags(rope).values())              # CPU: all off
    monkeypatch.setattr(model_config, "on_cuda", lambda: True)
    monkeypatch.setattr(model_config, "have_transformer_engine", lambda: True)
    real_find_spec = importlib.util.find_spec
    apex = {"fused_weight_gradient_mlp_cuda": None}
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: apex[name] if name in apex else real_find_spec(name, *a))
    assert not model_config.fusion_flags(rope)["gradient_accumulation_fusion"]   # TE, no apex kernel
    assert model_config.fusion_flags(rope)["apply_rope_fusion"]
    apex["fused_weight_gradient_mlp_cuda"] = importlib.machinery.ModuleSpec("fused_weight_gradient_mlp_cuda", None)
    assert model_config.fusion_flags(rope) == {
        "bias_activation_fusion": True, "bias_dropout_fusion": True, "masked_softmax_fusion": False,
        "apply_rope_fusion": True, "gradient_accumulation_fusion": True, "persist_layer_norm": False}
    flags = model_config.fusion_flags(alibi)                               # SDPA layers: no TE kernels
    assert flags["bias_activation_fusion"] and not flags["apply_rope_fusion"] \
        and not flags["gradient_accumulation_fusion"]
    monkeypatch.setattr(model_config, "have_transformer_engine", lambda: False)
    assert not model_config.fusion_flags(rope)["gradient_accumulation_fusion"]   # would need apex
    assert not any(model_config.fusion_flags(ModelConfig(fusions="off")).values())
    with pytest.raises(ValueError, match="parallel.recompute='some' must be false, selective or full"):
        model_config.recompute_flags("some")


def _dp_reshardable_rank(rank, world, root):
    init_layout(1, 1)
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    from pretrain.checkpointing import CheckpointManager, TrainState, read_meta, saved_optimizer_sharding
    from pretrain.parallelize import build_parallel_model
    from pretrain.step import train_step
    from stack_common.errors import UserError
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    from tests._dist_helpers import global_batches, microbatches

    cfg = tiny_model_config(num_layers=2)
    chunks = build_parallel_model(cfg, distributed_optimizer=True)
    optimizer = get_megatron_optimizer(OptimizerConfig(optimizer="adam", lr=1e-3, min_lr=1e-4,
                                                       use_distributed_optimizer=True), chunks)
    scheduler = OptimizerParamScheduler(optimizer, init_lr=0.0, max_lr=1e-3, min_lr=1e-4, lr_warmup_steps=0,
                                        lr_decay_steps=10, lr_decay_style="cosine", start_wd=0.1, end_wd=0.1,
                                        wd_incr_steps=10, wd_incr_style="constant")
    batch = global_batches(1, 4, cfg.seq_length, cfg.vocab_size)[0]
    train_step(chunks, optimizer, microbatches(batch, 2, rank, 2), 1, 2, cfg.seq_length)
    layout = {"tp": 1, "pp": 1, "vpp": None, "dp": 2}
    manager = CheckpointManager(root, 1, lambda state, keep: {"iteration": state.iteration, **layout},
                                optimizer_sharding="dp_reshardable")
    ckpt = manager.save(chunks, optimizer, scheduler, TrainState(iteration=1))
    same = saved_optimizer_sharding(ckpt, read_meta(ckpt), layout)
    try:
        saved_optimizer_sharding(ckpt, read_meta(ckpt), dict(layout, tp=2, dp=1))
        moved = None
    except UserError as err:
        moved = str(err)
    return same, moved


def test_dp_reshardable_optimizer_state_refuses_a_tp_change(two_ranks):
    for same, moved in (r["dp_reshardable"] for r in two_ranks):
        assert same == "dp_reshardable"
        assert moved is not None and "dp_reshardable, which loads only into the same TP/PP layout (tp=1 -> 2)" \
            in moved and "checkpoint.load_optimizer=false" in moved


# ----------------------------------------------------------------------------- shared launches

def _one_rank_checks(rank, world, root):
    """The single-process checks above in one spawned process (one start-up of torch and megatron)."""
    out = {"root": root, "extra_state": _extra_state_rank(rank, world, f"{root}/extra"),
           "eod": _eod_rank(rank, world, f"{root}/eod"), "recompute": _recompute_rank(rank, world)}
    out["apex"] = _apex_norm_rank(rank, world)
    return out


@pytest.fixture(scope="module")
def one_rank(tmp_path_factory):
    root = tmp_path_factory.mktemp("one_rank")
    for name in ("extra", "eod"):
        (root / name).mkdir()
    return launch(1, _one_rank_checks, str(root))[0]


def _signal_one_rank(rank, world):
    """SIGUSR2 reaches rank 0 only (Slurm may signal just the batch step's first task): both
    ranks still agree to exit, and only rank 0 hands the signal on to the handler before ours."""
    import os

    from pretrain.faults import ExitSignals

    init_layout(1, 1)
    handed = []
    signal.signal(signal.SIGUSR2, lambda signum, frame: handed.append(signum))
    signals = ExitSignals(["SIGUSR2"])
    try:
        before = signals.exit_reason()
        if rank == 0:
            os.kill(os.getpid(), signal.SIGUSR2)
        after = signals.exit_reason()
        signals.hand_over()
    finally:
        signal.signal(signal.SIGUSR2, signal.SIG_DFL)
    return before, after, signals.got, handed


def _two_rank_checks(rank, world, root):
    fresh, stale, empty = (f"{root}/{name}" for name in ("fresh", "stale", "empty"))
    return {"root": root, "signal_one_rank": _signal_one_rank(rank, world),
            "resume": _resume_rank(rank, world, [fresh, stale], [None, None]),
            "resume_error": _resume_rank(rank, world, [empty, stale], [f"{root}/nowhere", None]),
            "dp_reshardable": _dp_reshardable_rank(rank, world, f"{root}/dp_reshardable")}


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    root = tmp_path_factory.mktemp("two_ranks")
    _fake_checkpoint(root / "fresh", 8)
    _fake_checkpoint(root / "stale", 4)
    return launch(2, _two_rank_checks, str(root))


def test_optimizer_kind_change_is_one_clear_error():
    """A 7B run saved with the plain optimizer, resumed after the preset turned on the
    distributed one (and the reverse); checkpoints without the config load as before."""
    from pretrain.checkpointing import check_optimizer_kind
    from stack_common.errors import UserError

    plain = {"config": {"optimizer": {"distributed": False}}}
    with pytest.raises(UserError) as err:
        check_optimizer_kind("/runs/7b/checkpoints/iter_0001000", plain, distributed=True)
    msg = str(err.value)
    assert "its optimizer state was saved by the plain optimizer, this run uses the distributed optimizer" in msg
    assert "/runs/7b/checkpoints/iter_0001000" in msg and "optimizer.distributed=false" in msg \
        and "checkpoint.load_optimizer=false" in msg
    with pytest.raises(UserError, match="saved by the distributed optimizer, this run uses the plain optimizer"):
        check_optimizer_kind("ckpt", {"config": {"optimizer": {"distributed": True}}}, distributed=False)
    check_optimizer_kind("ckpt", plain, distributed=False)
    check_optimizer_kind("ckpt", {"iteration": 3}, distributed=True)


def test_memory_estimate_counts_the_logits_of_one_micro_batch():
    """7B at TP=2, seq 4096, micro-batch 1, bf16: vocabulary 125,696 (256 x 491, no padding);
    logits bf16 + fp32 copy + fp32 cross-entropy buffer = 4096 x 125952 x 10 / 2 bytes."""
    from pretrain.estimate import estimate

    run = compose_run(["model=baichuan2_7b", "parallel=tp2", "training.dry_run=true", "training.micro_batch_size=1",
                       "training.precision=bf16", "optimizer=tiny"])
    e = estimate(run, world=2)
    assert (run.seq_length, e.padded_vocab, e.bf16) == (4096, 125696, True)
    assert e.logits_bytes == 4096 * 125696 * 10 / 2 == 2_574_254_080
    assert e.total_bytes == e.state_bytes + e.activation_bytes + e.logits_bytes


def test_alibi_document_mask_bias_is_built_once_per_forward(monkeypatch):
    """Two layers of one forward share one masked [b, heads, s, s] bias (SDPA keeps it for the
    backward: one copy per layer would cost 0.67 GB each for 13B at TP=2, s=4096); a new mask,
    or the same mask edited in place, gets a new one with its own cuts."""
    from types import SimpleNamespace

    import torch.nn.functional as F

    from pretrain.model import attention as attn
    from pretrain.model.alibi import alibi_causal_bias, alibi_slopes

    config = SimpleNamespace(context_parallel_size=1, num_attention_heads=4, num_query_groups=4, kv_channels=8,
                             attention_dropout=0.0)
    tp = SimpleNamespace(tp=SimpleNamespace(size=lambda: 1, rank=lambda: 0))
    layers = [attn.SDPAttention(config, i + 1, None, "self", pg_collection=tp, alibi=True) for i in range(2)]
    seen = []
    real_sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention",
                        lambda *a, attn_mask=None, **k: seen.append(attn_mask)
                        or real_sdpa(*a, attn_mask=attn_mask, **k))
    q = torch.randn(6, 2, 4, 8)
    causal = torch.ones(6, 6, dtype=torch.bool).triu(1)
    mask = causal.clone()[None, None].repeat(2, 1, 1, 1)
    mask[0, 0, 3:, :3] = True                     # first sequence: a document ends after token 3

    def forward(m):
        for layer in layers:
            layer(q, q, q, attention_mask=m)
        return seen[-2:]

    first, second = forward(mask)
    assert first is second and first.shape == (2, 4, 6, 6)
    bias = alibi_causal_bias(torch.tensor(alibi_slopes(4)), 6, 6, torch.float32)
    expected = bias[None].masked_fill(mask, float("-inf"))
    assert torch.equal(first, expected)
    other = mask.clone()
    third, _ = forward(other)
    assert third is not first and torch.equal(third, expected)
    other[1, 0, 4:, :4] = True                    # edited in place: rebuilt with the new cut
    fourth, fifth = forward(other)
    assert fourth is fifth and fourth is not third and torch.isinf(fourth[1, :, 4, 0]).all()
    attn.clear_bias_cache()


def test_flash_alibi_slopes_are_made_once_and_stay_fp32():
    """The flash path hands flash-attn this rank's fp32 slopes, the same tensor at every call."""
    from types import SimpleNamespace

    from pretrain.model import attention as attn
    from pretrain.model.alibi import alibi_slopes

    config = SimpleNamespace(context_parallel_size=1, num_attention_heads=8, num_query_groups=8, kv_channels=4,
                             attention_dropout=0.0)
    second_rank = SimpleNamespace(tp=SimpleNamespace(size=lambda: 2, rank=lambda: 1))
    layer = attn.SDPAttention(config, 1, None, "self", pg_collection=second_rank, alibi=True)
    given = []

    def fake_flash(q, k, v, dropout_p, softmax_scale, causal, alibi_slopes):
        given.append(alibi_slopes)
        return q
    layer.flash = fake_flash
    q = torch.randn(5, 2, 4, 4, dtype=torch.bfloat16)
    for _ in range(3):
        assert layer(q, q, q).shape == (5, 2, 16)
    assert given[0] is given[1] is given[2] and given[0].dtype == torch.float32
    assert given[0].tolist() == alibi_slopes(8)[4:]


def test_flash_backend_with_fp32_weights_is_a_config_error():
    from stack_common.errors import ConfigError

    with pytest.raises(ConfigError, match="model.attention_backend=flash needs bf16 weights"):
        compose_run(["model=tiny_alibi", "model.attention_backend=flash", "training.precision=fp32",
                     "training.dry_run=true", "optimizer=tiny"])
    compose_run(["model=tiny_alibi", "model.attention_backend=flash", "training.precision=bf16",
                 "training.dry_run=true", "optimizer=tiny"])


def test_peak_tflops_tells_the_h100_parts_apart():
    from pretrain.monitoring import device_peak_tflops

    assert device_peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert device_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert device_peak_tflops("NVIDIA H100 NVL") == 835.0
    assert device_peak_tflops("NVIDIA H200") == 989.0
    assert device_peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert device_peak_tflops("Tesla T4") is None


def test_validation_reads_without_worker_processes(monkeypatch):
    """Training batches come through data.num_workers processes; the validation set, read anew
    at every evaluation, in the process itself (no workers started per evaluation)."""
    from types import SimpleNamespace

    from pretrain import data

    calls = []
    monkeypatch.setattr(data, "microbatches", lambda *args, **kwargs: calls.append((args, kwargs)) or iter(()))
    run = SimpleNamespace(data=SimpleNamespace(num_workers=2),
                          training=SimpleNamespace(micro_batch_size=2, eval_iters=3, global_batch_size=8))
    assert data.loader_settings(run)["num_workers"] == 2
    data.valid_microbatches("dataset", run, 1, 2)
    assert calls == [(("dataset", 0, 2, 1, 2), {"end_sample": 24, "num_workers": 0,
                                                 "pin_memory": torch.cuda.is_available()})]
