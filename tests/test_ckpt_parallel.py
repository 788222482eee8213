"""checkpoints_tools against the trainer: checkpoints saved by the trainer's CheckpointManager at
TP=2 x PP=2 for a RoPE and an ALiBi model, exported to both HF formats and compared with the
trainer's logits; import at TP=1 and TP=2 with the same logits in the trainer; HF -> dist ->
HF bitwise; the exported tokenizer gives the trainer's ids; generate runs.

All multi-process work goes through two launches of pretrain.parallel.run_local (module fixture)."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from checkpoints_tools.export import export_hf
from checkpoints_tools.hf_io import HFCheckpoint
from checkpoints_tools.import_hf import import_hf

SEQ = 32
TOKENS = torch.randint(3, 1000, (2, SEQ), generator=torch.Generator().manual_seed(7))


def tiny_config(position: str):
    from pretrain.model import ModelConfig

    return ModelConfig(name=f"tiny_{position}", hidden_size=64, num_layers=4, num_attention_heads=4,
                       ffn_hidden_size=96, vocab_size=1000, seq_length=SEQ * 2,
                       position_embedding_type=position)


# ----------------------------------------------------------------------------- ranks

def _randomize(chunks, seed: int) -> None:
    """Every parameter random (norms too), so a swapped or mis-sliced tensor shows in the logits.
    Replicated tensors must agree across TP ranks: draw them from a seed shared by the stage."""
    from megatron.core import parallel_state as mpu

    from pretrain.model import unwrap

    gen = torch.Generator().manual_seed(seed * 100 + mpu.get_pipeline_model_parallel_rank() * 10
                                        + mpu.get_tensor_model_parallel_rank())
    shared = torch.Generator().manual_seed(seed * 100 + mpu.get_pipeline_model_parallel_rank() * 10)
    with torch.no_grad():
        for chunk in chunks:
            for name, p in unwrap(chunk).named_parameters():
                replicated = name.endswith("layernorm.weight") or name.endswith("layer_norm_weight")
                noise = torch.randn(p.shape, generator=shared if replicated else gen)
                p.copy_(1.0 + 0.2 * noise if replicated else 0.3 * noise)


def trainer_logits(cfg, ckpt_dir) -> torch.Tensor:
    """Logits of the trainer's model (TP=1, PP=1 in this rank) loaded from ckpt_dir."""
    from pretrain.checkpointing import load_model_weights
    from pretrain.model import build_model, unwrap

    chunks = build_model(cfg, tp=1, pp=1, dtype=torch.float32)
    load_model_weights(chunks, ckpt_dir)
    model = unwrap(chunks[0]).eval()
    position_ids = torch.arange(SEQ)[None].expand(TOKENS.shape[0], -1)
    with torch.no_grad():
        logits = model(input_ids=TOKENS, position_ids=position_ids, attention_mask=None)
    return logits[..., : cfg.vocab_size].float()


def make_runs_rank(rank: int, world: int, out: str) -> None:
    """TP=2 x PP=2: build, randomize, save two kept checkpoints per model with the trainer's
    CheckpointManager; then, at TP=1, load the last one and record the trainer's logits."""
    from pretrain import parallel
    from pretrain.checkpointing import CheckpointManager, TrainState
    from pretrain.model import build_model, padded_vocab_size

    for position in ("rope", "alibi"):
        cfg = tiny_config(position)
        run_dir = Path(out) / position
        parallel.init_distributed(2, 2, seed=1234, backend="gloo")
        chunks = build_model(cfg, tp=2, pp=2, dtype=torch.float32)

        def meta(state, keep, cfg=cfg):
            return {"iteration": state.iteration, "consumed_samples": state.consumed_samples,
                    "consumed_tokens": state.consumed_tokens, "tp": 2, "pp": 2, "vpp": None, "dp": 1,
                    "model": asdict(cfg), "vocab_size": cfg.vocab_size,
                    "padded_vocab_size": padded_vocab_size(cfg.vocab_size, 2), "tokenizer": None,
                    "keep": keep, "train_state": asdict(state), "config": {}}

        manager = CheckpointManager(run_dir, keep_last=1, meta_fn=meta)
        for step, (iteration, samples) in enumerate([(4, 32), (8, 64)]):
            _randomize(chunks, seed=step)
            manager.save(chunks, None, None, TrainState(iteration=iteration, consumed_samples=samples,
                                                        consumed_tokens=samples * SEQ), keep=True)
        # Same process group, new layout: TP=1, PP=1 (data parallel 4) for the reference logits.
        parallel.init_distributed(1, 1, seed=1234, backend="gloo")
        logits = trainer_logits(cfg, run_dir / "checkpoints" / "iter_0000008")
        if rank == 0:
            torch.save(logits, Path(out) / f"{position}_logits.pt")
    parallel.destroy()


def logits_rank(rank: int, world: int, jobs: list) -> None:
    """World of 1: the trainer's logits for each (position, checkpoint, output file)."""
    from pretrain import parallel

    for position, ckpt, out in jobs:
        parallel.init_distributed(1, 1, seed=1234, backend="gloo")
        torch.save(trainer_logits(tiny_config(position), ckpt), out)
    parallel.destroy()


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    from pretrain.parallel import run_local

    out = tmp_path_factory.mktemp("parallel_runs")
    run_local(4, make_runs_rank, str(out), timeout=300)
    return out


@pytest.fixture(scope="module")
def exports(runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("exports")
    done = {}
    for position in ("rope", "alibi"):
        ckpt = runs / position / "checkpoints" / "iter_0000008"
        for fmt in (("llama", "baichuan") if position == "rope" else ("baichuan",)):
            done[position, fmt] = export_hf(ckpt, out / f"{position}_{fmt}", fmt=fmt)
    return done


# ----------------------------------------------------------------------------- tests

def test_trainer_checkpoints_are_what_the_tools_expect(runs):
    """The tools read the trainer's TP=2 x PP=2 saves as whole models: both kept saves complete (keep_last=1
    prunes no milestone), four distinct layers (the second stage's are layers 2 and 3, not a second 0 and 1),
    every TP-split tensor whole, and each save holds its own weights."""
    from checkpoints_tools import layout as L
    from checkpoints_tools.export import MegatronCheckpoint
    from checkpoints_tools.inspect_run import inspect_run

    report = inspect_run(runs / "rope")
    assert report["latest"] == "iter_0000008"
    assert [(r["name"], r["status"], r["latest"]) for r in report["checkpoints"]] == [
        ("iter_0000004", "ok", False), ("iter_0000008", "ok", True)]
    root = runs / "rope" / "checkpoints"
    last, first = MegatronCheckpoint(root / "iter_0000008"), MegatronCheckpoint(root / "iter_0000004")
    qkv = [last.layer_part("qkv", i) for i in range(4)]
    assert all(q.shape == (3 * 64, 64) for q in qkv)
    assert all(not torch.equal(qkv[i], qkv[j]) for i in range(4) for j in range(i + 1, 4))
    embedding = last.read(L.EMBEDDING)
    assert embedding.shape == (1024, 64)                  # vocabulary 1000 padded to 128 x tp
    # the two TP halves were drawn by two ranks from different seeds: neither is a copy of the other
    assert not torch.equal(embedding[:512], embedding[512:])
    assert not torch.equal(first.layer_part("qkv", 0), qkv[0])


@pytest.mark.parametrize("position,fmt", [("rope", "llama"), ("rope", "baichuan"), ("alibi", "baichuan")])
def test_logit_parity_with_trainer(runs, exports, position, fmt):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(exports[position, fmt], dtype=torch.float32,
                                                 trust_remote_code=fmt == "baichuan")
    with torch.no_grad():
        hf_logits = model(TOKENS).logits.float()
    ref = torch.load(runs / f"{position}_logits.pt")
    assert hf_logits.shape == ref.shape == (2, SEQ, 1000)
    assert ref.abs().max() > 0.05                       # not a degenerate model
    diff = (hf_logits - ref).abs().max().item()
    print(f"max |logits(HF {fmt}) - logits(trainer)| for {position}: {diff:.3g}")
    assert diff < 1e-5
    generated = model.generate(TOKENS[:, :8], max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert generated.shape == (2, 14) and torch.equal(generated[:, :8], TOKENS[:, :8])


def test_import_tp1_tp2_same_logits_and_roundtrip_bitwise(runs, exports, tmp_path):
    from pretrain.parallel import run_local

    src = exports["alibi", "baichuan"]
    ck1 = import_hf(src, tmp_path / "tp1", tp=1, pp=1)
    ck2 = import_hf(src, tmp_path / "tp2", tp=2, pp=1)
    meta = json.loads((ck2 / "meta.json").read_text())
    assert (meta["tp"], meta["pp"], meta["padded_vocab_size"]) == (2, 1, 1024)
    jobs = [("alibi", str(ck1), str(tmp_path / "l1.pt")), ("alibi", str(ck2), str(tmp_path / "l2.pt"))]
    run_local(1, logits_rank, jobs, timeout=300)
    l1, l2 = torch.load(tmp_path / "l1.pt"), torch.load(tmp_path / "l2.pt")
    ref = torch.load(runs / "alibi_logits.pt")
    assert torch.equal(l1, l2) or (l1 - l2).abs().max() < 1e-6
    assert (l1 - ref).abs().max() < 1e-5
    back = export_hf(ck2, tmp_path / "back", fmt="baichuan")
    a, b = HFCheckpoint(src), HFCheckpoint(back)
    assert a.names() == b.names()
    for name in a.names():
        assert torch.equal(a.get(name), b.get(name)), name
