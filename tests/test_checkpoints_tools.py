"""checkpoints_tools without the trainer: layout facts, the baichuan modeling file, streaming
export from torch_dist files, bad inputs, inspect, the series commands and lm-eval.

Checkpoints here are written with torch.distributed.checkpoint directly, in the key layout of
megatron-core's GPTModel; tests/test_ckpt_parallel.py uses checkpoints saved by the trainer."""
from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from _helpers import cli, train_sentencepiece
from checkpoints_tools import layout as L
from checkpoints_tools.export import export_hf
from checkpoints_tools.hf_io import HFCheckpoint, write_config
from stack_common.errors import UserError

REPO = Path(__file__).resolve().parents[1]
SPECIAL = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)


def tiny_arch(position="rope", groups=4, vocab=1000, padded=1024) -> L.Arch:
    return L.Arch(num_layers=2, hidden_size=64, num_heads=4, num_query_groups=groups,
                  ffn_hidden_size=96, vocab_size=vocab, padded_vocab_size=padded, seq_length=128,
                  norm_eps=1e-6, position=position)


def random_hf_dir(path: Path, fmt: str, arch: L.Arch, seed: int = 0) -> Path:
    """A Hugging Face directory with random weights (norms too, so swapped norms would show)."""
    from transformers import AutoModelForCausalLM

    path.mkdir(parents=True)
    write_config(path, fmt, arch, torch.float32, SPECIAL)
    torch.manual_seed(seed)
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path, trust_remote_code=True)
    model = AutoModelForCausalLM.from_config(config, trust_remote_code=True)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    model.save_pretrained(path)
    for name in ("configuration_baichuan.py", "modeling_baichuan.py") if fmt == "baichuan" else ():
        shutil.copyfile(REPO / "checkpoints_tools" / "hf_templates" / name, path / name)
    return path


def megatron_globals(hf: HFCheckpoint, padded: int) -> dict[str, torch.Tensor]:
    """Global megatron tensors (layer axis stacked, as dist_checkpointing stores them)."""
    layers = [L.megatron_layer_from_hf(hf.format, i, hf.get, hf.arch) for i in range(hf.arch.num_layers)]
    sd = {f"decoder.layers.{L.LAYER_PARTS[p][0]}": torch.stack([layer[p] for layer in layers])
          for p in L.LAYER_PARTS}
    sd[L.EMBEDDING] = L.pad_vocab(hf.get("model.embed_tokens.weight"), padded)
    sd[L.OUTPUT] = L.pad_vocab(hf.get("lm_head.weight"), padded)
    sd[L.FINAL_NORM] = hf.get("model.norm.weight")
    return sd


def write_dist_checkpoint(ckpt: Path, sd: dict, arch: L.Arch, iteration: int, tokens: int,
                          keep: bool = True) -> Path:
    import torch.distributed.checkpoint as dcp

    dcp.save(sd, checkpoint_id=str(ckpt), no_dist=True)
    (ckpt / "metadata.json").write_text(json.dumps({"sharded_backend": "torch_dist",
                                                    "sharded_backend_version": 1}))
    model = {"num_layers": arch.num_layers, "hidden_size": arch.hidden_size,
             "num_attention_heads": arch.num_heads, "num_query_groups": arch.num_query_groups,
             "ffn_hidden_size": arch.ffn_hidden_size, "seq_length": arch.seq_length,
             "position_embedding_type": arch.position, "vocab_size": arch.vocab_size}
    (ckpt / "meta.json").write_text(json.dumps({
        "iteration": iteration, "consumed_tokens": tokens, "consumed_samples": tokens // 128,
        "tp": 1, "pp": 1, "vpp": None, "dp": 1, "keep": keep, "model": model,
        "vocab_size": arch.vocab_size, "padded_vocab_size": arch.padded_vocab_size}))
    return ckpt


@pytest.fixture(scope="module")
def tok_model(tmp_path_factory) -> Path:
    """A 1000-piece SentencePiece model with the tokenizer package's Baichuan 2 settings."""
    return train_sentencepiece(tmp_path_factory.mktemp("tok"), 1000)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run directory with two kept checkpoints (same model, different weights) of a RoPE model,
    and the HF directories they were made from."""
    root = tmp_path_factory.mktemp("run")
    arch = tiny_arch()
    ckpts = root / "RUN" / "checkpoints"
    ckpts.mkdir(parents=True)
    sources = []
    for i, (iteration, tokens) in enumerate([(10, 40960), (20, 81920)]):
        hf_dir = random_hf_dir(root / f"src{i}", "baichuan", arch, seed=i)
        hf = HFCheckpoint(hf_dir)
        write_dist_checkpoint(ckpts / f"iter_{iteration:07d}", megatron_globals(hf, arch.padded_vocab_size),
                              arch, iteration, tokens)
        sources.append(hf_dir)
    (ckpts / "latest").write_text("iter_0000020\n")
    return {"run_dir": root / "RUN", "ckpts": ckpts, "sources": sources, "arch": arch, "root": root}


# ----------------------------------------------------------------------------- layout facts

def test_alibi_slopes_follow_baichuan_rule():
    from checkpoints_tools.hf_templates.modeling_baichuan import alibi_slopes

    # Independent statement: n = 2^k heads -> slope_i = 2^(-8 (i+1) / n); 40 heads -> the 32
    # slopes of n=32, then the slopes of n=64 at odd exponents 1, 3, ..., 15.
    want32 = [2 ** (-8 * (i + 1) / 32) for i in range(32)]
    want40 = want32 + [2 ** (-8 * (2 * j + 1) / 64) for j in range(8)]
    assert torch.allclose(alibi_slopes(32), torch.tensor(want32), rtol=0, atol=1e-7)
    assert torch.allclose(alibi_slopes(40), torch.tensor(want40), rtol=0, atol=1e-7)


def test_qkv_grouped_rows_split_merge_and_w_pack():
    arch = tiny_arch(groups=2)  # 4 heads, 2 groups, head_dim 16
    d, h = arch.head_dim, arch.hidden_size
    # Label each megatron row by (group, slot, row-in-head): slot 0..1 = q heads, 2 = k, 3 = v.
    labels = torch.tensor([[g * 100 + s * 10 + r / 100 for r in range(d)] for g in range(2)
                           for s in range(4)]).reshape(-1, 1).expand(-1, h)
    q, k, v = L.split_qkv(labels, arch)
    assert q.shape == (4 * d, h) and k.shape == (2 * d, h) and v.shape == (2 * d, h)
    assert q[0, 0] == 0 and q[d, 0] == 10 and q[2 * d, 0] == 100 and q[3 * d, 0] == 110  # heads in order
    assert k[0, 0] == 20 and k[d, 0] == 120 and v[0, 0] == 30 and v[d, 0] == 130
    assert torch.equal(L.merge_qkv(q, k, v, arch), labels)
    packed = L.w_pack(q, k, v)
    assert all(torch.equal(a, b) for a, b in zip(L.unpack_w_pack(packed, arch), (q, k, v)))


def test_tp_shard_rules():
    gate, up = torch.arange(8.0)[:, None].expand(8, 3), 100 + torch.arange(8.0)[:, None].expand(8, 3)
    fc1 = torch.cat([gate, up])
    r1 = L.tp_shard("fc1", fc1, 1, 2)
    assert torch.equal(r1, torch.cat([gate[4:], up[4:]]))  # [gate; up] of rank 1's rows
    proj = torch.arange(12.0).reshape(2, 6)
    assert torch.equal(L.tp_shard("proj", proj, 1, 2), proj[:, 3:])
    assert torch.equal(L.tp_shard("attn_norm", proj, 1, 2), proj)
    w = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    once = L.normalize_rows(w)
    assert torch.allclose(once.norm(dim=1), torch.ones(5), atol=1e-6, rtol=0)
    # idempotent up to fp32 rounding (a few ulps of 1.0)
    assert torch.allclose(L.normalize_rows(once), once, atol=5e-7, rtol=0)


# ----------------------------------------------------------------------------- modeling file

def test_baichuan_modeling_equals_llama_with_folded_normhead(tmp_path):
    """RoPE Baichuan (NormHead applied at run time) == LlamaForCausalLM with normalized rows."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    arch = tiny_arch(vocab=100, padded=128)
    bc_dir = random_hf_dir(tmp_path / "bc", "baichuan", arch)
    llama_dir = tmp_path / "llama"
    llama_dir.mkdir()
    write_config(llama_dir, "llama", arch, torch.float32, SPECIAL)
    hf = HFCheckpoint(bc_dir)
    tensors = {}
    for name in hf.names():
        t = hf.get(name)
        if name.endswith("W_pack.weight"):
            for n, part in zip("qkv", L.unpack_w_pack(t, arch)):
                tensors[name.replace("W_pack", f"{n}_proj")] = part.contiguous()
        else:
            tensors[name] = L.normalize_rows(t) if name == "lm_head.weight" else t
    save_file(tensors, str(llama_dir / "model.safetensors"))
    bc = AutoModelForCausalLM.from_pretrained(bc_dir, trust_remote_code=True, dtype=torch.float32)
    llama = LlamaForCausalLM.from_pretrained(llama_dir, dtype=torch.float32)
    ids = torch.randint(0, 100, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (bc(ids).logits - llama(ids).logits).abs().max().item()
    assert diff < 1e-5
    # The stored head is untouched by loading and running (no in-place normalization).
    assert torch.equal(bc.lm_head.weight.detach(), load_file(str(bc_dir / "model.safetensors"))["lm_head.weight"])


@pytest.mark.parametrize("fmt,position,groups", [("baichuan", "alibi", 4), ("baichuan", "rope", 4),
                                                   ("llama", "rope", 2)])
def test_generation_with_cache_matches_full_forward(tmp_path, fmt, position, groups):
    """Greedy generation on a left-padded batch: with the KV cache, without it, and the logits of
    one full forward over the generated text all agree (the cache API changes across releases)."""
    from transformers import AutoModelForCausalLM

    arch = tiny_arch(position, groups=groups, vocab=100, padded=128)
    model = AutoModelForCausalLM.from_pretrained(random_hf_dir(tmp_path / fmt, fmt, arch),
                                                 trust_remote_code=True, dtype=torch.float32)
    gen = torch.Generator().manual_seed(1)
    lengths = [6, 3, 5]
    prompt = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    mask = torch.zeros_like(prompt)
    for row, n in enumerate(lengths):
        prompt[row, -n:] = torch.randint(3, 100, (n,), generator=gen)
        mask[row, -n:] = 1
    new = 10
    runs = {cache: model.generate(prompt, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                                  do_sample=False, pad_token_id=0, use_cache=cache,
                                  return_dict_in_generate=True, output_logits=True)
            for cache in (True, False)}
    cached, uncached = runs[True], runs[False]
    assert cached.sequences.shape == (3, prompt.shape[1] + new)
    assert torch.equal(cached.sequences, uncached.sequences)
    full_mask = torch.cat([mask, torch.ones(3, new, dtype=torch.long)], dim=1)
    with torch.no_grad():
        full = model(cached.sequences, attention_mask=full_mask).logits
    start = prompt.shape[1] - 1  # the logits at position t predict token t + 1
    expected = full[:, start:start + new]
    for run in (cached, uncached):
        steps = torch.stack(run.logits, dim=1)
        assert steps.shape == expected.shape
        assert torch.allclose(steps, expected, atol=1e-4, rtol=1e-4), (steps - expected).abs().max()
    assert torch.equal(expected.argmax(-1), cached.sequences[:, prompt.shape[1]:])


# ----------------------------------------------------------------------------- export

@pytest.mark.parametrize("fmt", ["llama", "baichuan"])
def test_export_is_bitwise_and_sharded(run, tmp_path, fmt):
    src = HFCheckpoint(run["sources"][1])
    out = export_hf(run["ckpts"] / "iter_0000020", tmp_path / fmt, fmt=fmt, max_shard_bytes=200_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 1 and all((out / f).is_file() for f in files)
    got = HFCheckpoint(out)
    for name in src.names():
        t = src.get(name)
        if fmt == "llama" and name.endswith("W_pack.weight"):
            for n, part in zip("qkv", L.unpack_w_pack(t, src.arch)):
                assert torch.equal(got.get(name.replace("W_pack", f"{n}_proj")), part)
            continue
        want = L.normalize_rows(t) if name == "lm_head.weight" else t  # NormHead: rows stored normalized
        assert torch.equal(got.get(name), want), name
    meta = json.loads((out / "export_meta.json").read_text())
    assert meta["iteration"] == 20 and meta["consumed_tokens"] == 81920
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# ----------------------------------------------------------------------------- bad input

def _copy_ckpt(run, tmp_path) -> Path:
    dst = tmp_path / "iter_0000020"
    shutil.copytree(run["ckpts"] / "iter_0000020", dst)
    return dst


def _cli(*args) -> subprocess.CompletedProcess:
    return cli("checkpoints_tools", *args, timeout=None)


def test_bad_inputs_give_one_clear_error_and_leave_nothing(run, tmp_path):
    good = run["ckpts"] / "iter_0000020"
    # 1. truncated data file
    ck = _copy_ckpt(run, tmp_path / "a")
    data = next(ck.glob("*.distcp"))
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    with pytest.raises(UserError, match="truncated") as err:
        export_hf(ck, tmp_path / "a" / "out")
    assert data.name in str(err.value)
    # 2. incomplete: meta.json (written last by the trainer) missing
    ck = _copy_ckpt(run, tmp_path / "b")
    (ck / "meta.json").unlink()
    with pytest.raises(UserError, match="incomplete checkpoint: meta.json is missing"):
        export_hf(ck, tmp_path / "b" / "out")
    # 3. config that does not describe the weights
    ck = _copy_ckpt(run, tmp_path / "c")
    meta = json.loads((ck / "meta.json").read_text())
    meta["model"]["hidden_size"] = 128
    (ck / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="embedding.word_embeddings.weight.*shape"):
        export_hf(ck, tmp_path / "c" / "out")
    # 4. ALiBi to llama is refused
    meta["model"].update(hidden_size=64, position_embedding_type="alibi")
    (ck / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="llama format has no ALiBi"):
        export_hf(ck, tmp_path / "c" / "out", fmt="llama")
    for sub in "abc":
        assert sorted(p.name for p in (tmp_path / sub).iterdir()) == ["iter_0000020"]
    # 5. target exists: one line on stderr, exit code 2, the target untouched
    target = tmp_path / "exists"
    target.mkdir()
    (target / "keep.txt").write_text("x")
    res = _cli("export-hf", good, "--out", target)
    assert res.returncode == 2 and res.stderr.strip().count("\n") == 0
    assert "target directory exists" in res.stderr and str(target) in res.stderr
    assert [p.name for p in target.iterdir()] == ["keep.txt"]
    # 6. a failure in the middle of writing leaves no partial output
    with pytest.raises(UserError):
        export_hf(good, tmp_path / "d" / "out", tokenizer=tmp_path / "missing.model")
    assert not (tmp_path / "d").exists() or not any((tmp_path / "d").iterdir())


def test_inspect_reports_complete_broken_and_leftover(run, tmp_path):
    run_dir = tmp_path / "RUN"
    shutil.copytree(run["run_dir"], run_dir)
    ckpts = run_dir / "checkpoints"
    shutil.copytree(ckpts / "iter_0000010", ckpts / "iter_0000015")
    meta = json.loads((ckpts / "iter_0000015" / "meta.json").read_text())
    (ckpts / "iter_0000015" / "meta.json").write_text(json.dumps({**meta, "iteration": 15}))
    next((ckpts / "iter_0000015").glob("*.distcp")).write_bytes(b"")
    (ckpts / ".iter_0000030.tmp").mkdir()
    res = _cli("inspect", run_dir, "--json")
    assert res.returncode == 0, res.stderr
    rows = {r["name"]: r for r in json.loads(res.stdout)["checkpoints"]}
    assert rows["iter_0000010"]["status"] == "ok" and rows["iter_0000010"]["consumed_tokens"] == 40960
    assert rows["iter_0000020"]["latest"] and rows["iter_0000020"]["tp"] == 1
    assert rows["iter_0000015"]["status"] == "broken" and "truncated" in rows["iter_0000015"]["problem"]
    assert rows[".iter_0000030.tmp"]["status"] == "incomplete"
    assert rows["iter_0000010"]["size_bytes"] > 4 * 64 * 1024  # embeddings alone are bigger
    table = _cli("inspect", run_dir).stdout
    assert "iter_0000020" in table and "ok (latest)" in table and "40.96K" in table


# ----------------------------------------------------------------------------- series + lm-eval

TASK_ROWS = [{"question": f"What is {a} plus {b}?", "choices": [str(a + b), str(a + b + 1), str(a * b + 3)],
              "label": 0} for a, b in [(1, 2), (3, 4), (5, 6), (2, 2), (7, 1), (4, 4)]]


def write_local_task(d: Path) -> Path:
    d.mkdir()
    (d / "data.jsonl").write_text("\n".join(json.dumps(r) for r in TASK_ROWS))
    (d / "tiny_arith.yaml").write_text(f"""task: tiny_arith
dataset_path: json
dataset_kwargs:
  data_files:
    test: {d / 'data.jsonl'}
output_type: multiple_choice
test_split: test
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{label}}}}"
doc_to_choice: "{{{{choices}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
""")
    return d


def own_accuracy(export_dir: Path) -> float:
    """The task's accuracy computed here, independently of lm-eval."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(export_dir, trust_remote_code=True, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(export_dir, trust_remote_code=True)
    correct = 0
    for row in TASK_ROWS:
        context = f"Question: {row['question']}\nAnswer:"
        scores = []
        for choice in row["choices"]:
            whole = tok(context + " " + choice)["input_ids"]
            n_ctx = len(tok(context)["input_ids"])
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor(whole[:-1])[None]).logits[0], -1)
            scores.append(sum(logp[i - 1, whole[i]].item() for i in range(n_ctx, len(whole))))
        correct += int(max(range(len(scores)), key=scores.__getitem__) == row["label"])
    return correct / len(TASK_ROWS)


def test_export_series_and_eval_series(run, tok_model, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    exports = tmp_path / "EXPORTS"
    res = _cli("export-series", run["run_dir"], "--out", exports, "--format", "baichuan",
               "--tokenizer", tok_model)
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in exports.iterdir()) == ["train_00041K", "train_00082K"]
    again = _cli("export-series", run["run_dir"], "--out", exports, "--format", "baichuan")
    assert again.returncode == 0 and "skipping" in again.stderr  # resumable: existing exports kept
    heldout = tmp_path / "heldout.txt"
    heldout.write_text("The quick brown fox jumps over the lazy dog. 百川 2 是一个大模型。\n" * 20)
    # The exported tokenizer gives the ids the trainer's data was encoded with (SentencePiece).
    import sentencepiece as spm
    from transformers import AutoTokenizer

    text = heldout.read_text() + "def f(x):\n\treturn x ** 2  # 平方 😀"
    hf_tok = AutoTokenizer.from_pretrained(exports / "train_00082K", trust_remote_code=True)
    assert hf_tok(text)["input_ids"] == spm.SentencePieceProcessor(model_file=str(tok_model)).encode(text)
    tasks = write_local_task(tmp_path / "tasks")
    res = _cli("eval-series", exports, "--text", heldout, "--tasks", "tiny_arith",
               "--include-path", tasks, "--seq-length", 64)
    assert res.returncode == 0, res.stderr[-3000:]
    out = exports / "eval"
    rows = json.loads((out / "series.json").read_text())["rows"]
    assert [r["tokens"] for r in rows] == [40960, 81920]
    for r, export in zip(rows, sorted(exports.glob("train_*"))):
        assert 1.0 < r["ppl/heldout"] < 1e6
        assert r["tiny_arith/acc"] == pytest.approx(own_accuracy(export), abs=1e-9)
    assert rows[0]["ppl/heldout"] != rows[1]["ppl/heldout"]
    assert (out / "series.csv").read_text().splitlines()[0].startswith("name,tokens,ppl/heldout")
    assert "| train_00041K | 40960 |" in (out / "series.md").read_text()
    assert (out / "plot_ppl_heldout.png").read_bytes()[:4] == b"\x89PNG"
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    events = acc.Scalars("series/ppl/heldout")
    assert [e.step for e in events] == [40960, 81920]
    assert math.isclose(events[1].value, rows[1]["ppl/heldout"], rel_tol=1e-6)


# ----------------------------------------------------------------------------- import inputs

def test_released_baichuan2_layout_is_read(tmp_path):
    """Released Baichuan 2 checkpoints: pytorch_model*.bin shards with an index, and configs
    without a position field (tests/test_continue_pretraining.py: the type from the code)."""
    from checkpoints_tools.hf_io import arch_from_hf_config

    arch = tiny_arch(vocab=100, padded=128)
    src = HFCheckpoint(random_hf_dir(tmp_path / "bc", "baichuan", arch))
    tensors = {name: src.get(name) for name in src.names()}
    bin_dir = tmp_path / "released"
    bin_dir.mkdir()
    shutil.copyfile(src.dir / "config.json", bin_dir / "config.json")
    names = sorted(tensors)
    halves = [names[: len(names) // 2], names[len(names) // 2:]]
    weight_map = {}
    for i, part in enumerate(halves, start=1):
        file = f"pytorch_model-0000{i}-of-00002.bin"
        torch.save({n: tensors[n] for n in part}, bin_dir / file)
        weight_map.update({n: file for n in part})
    (bin_dir / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    released = HFCheckpoint(bin_dir)
    assert all(torch.equal(released.get(n), tensors[n]) for n in names)
    config_13b = {"model_type": "baichuan", "hidden_size": 5120, "num_hidden_layers": 40,
                  "num_attention_heads": 40, "intermediate_size": 13696, "vocab_size": 125696,
                  "model_max_length": 4096, "rms_norm_eps": 1e-6}
    # The shape decides nothing: the position type comes from a field, --position or the code.
    with pytest.raises(UserError, match="field 'position_embedding': no position embedding type"):
        arch_from_hf_config(config_13b, "13b")
    assert arch_from_hf_config(config_13b, "13b", "alibi").position == "alibi"


def test_import_rejects_bad_inputs_before_starting_processes(tmp_path):
    from stack_common.errors import ConfigError

    from checkpoints_tools.import_hf import import_hf

    src = random_hf_dir(tmp_path / "bc", "baichuan", tiny_arch(vocab=100, padded=128))
    (tmp_path / "exists").mkdir()
    with pytest.raises(UserError, match="target directory exists"):
        import_hf(src, tmp_path / "exists")
    with pytest.raises(ConfigError, match="--tp 3 does not divide heads=4"):
        import_hf(src, tmp_path / "out", tp=3)
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "intermediate_size": 128}))
    with pytest.raises(UserError, match="gate_proj.weight.*config.json implies"):
        import_hf(src, tmp_path / "out")
    res = _cli("import-hf", tmp_path / "nowhere", "--out", tmp_path / "out")
    assert res.returncode == 2 and "config.json is missing" in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bc", "exists"]


def test_series_names_do_not_change_as_the_run_grows():
    from checkpoints_tools.series import series_names

    planned = 2_600 * 10**9  # a Baichuan-sized run: names in B
    tokens = [220 * 10**9, 440 * 10**9, 1_500_000_000_000, 1_500_400_000_000, 2_420 * 10**9]
    iters = [1000, 2000, 6800, 6802, 11000]
    full = series_names(tokens, iters, planned)
    assert full[:3] == ["train_00220B", "train_00440B", "train_01500B"]
    assert full[3] == "train_01500B_iter0006802" and full[4] == "train_02420B"
    for n in range(1, len(tokens)):
        assert series_names(tokens[:n], iters[:n], planned) == full[:n]
    small = series_names([153_600, 307_200], [75, 150], 614_400)
    assert small == ["train_00154K", "train_00307K"]
