"""eval-series at scale: lm-eval's own HF backend (batched), scores checked against a direct
computation here, per-(checkpoint, task) caching, the harness version and task configs in
series.json, --num-fewshot, a directory laid out like a released Baichuan 2 checkpoint, and
--compare drawing two series on the same axes."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from _helpers import cli, train_sentencepiece
from checkpoints_tools.hf_io import HFCheckpoint
from test_checkpoints_tools import (megatron_globals, own_accuracy, random_hf_dir, tiny_arch,
                                    write_dist_checkpoint, write_local_task)

REPO = Path(__file__).resolve().parents[1]
HELDOUT = "The quick brown fox jumps over the lazy dog. 百川 2 是一个大模型。\n" * 12


@pytest.fixture(scope="module")
def tok_model(tmp_path_factory) -> Path:
    return train_sentencepiece(tmp_path_factory.mktemp("tok"), 1000)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tok_model):
    """Two exports of a tiny run (baichuan format, with the tokenizer), a held-out text and a task."""
    from checkpoints_tools.series import export_series

    root = tmp_path_factory.mktemp("series")
    arch = tiny_arch()
    ckpts = root / "RUN" / "checkpoints"
    ckpts.mkdir(parents=True)
    for i, (iteration, tokens) in enumerate([(10, 40960), (20, 81920)]):
        hf = HFCheckpoint(random_hf_dir(root / f"src{i}", "baichuan", arch, seed=10 + i))
        write_dist_checkpoint(ckpts / f"iter_{iteration:07d}", megatron_globals(hf, arch.padded_vocab_size),
                              arch, iteration, tokens)
    (ckpts / "latest").write_text("iter_0000020\n")
    export_series(root / "RUN", root / "exports", fmt="baichuan", tokenizer=tok_model)
    heldout = root / "heldout.txt"
    heldout.write_text(HELDOUT, encoding="utf-8")
    return {"exports": root / "exports", "heldout": heldout, "tasks": write_local_task(root / "tasks"),
            "root": root}


def own_perplexity(model_dir: Path, text: str, window: int) -> float:
    """exp(mean next-token loss) over non-overlapping windows, one window at a time."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=True, dtype=torch.float32).eval()
    ids = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=True)(text)["input_ids"]
    total, count = 0.0, 0
    for start in range(0, len(ids) - 1, window):
        chunk = torch.tensor(ids[start:start + window + 1])[None]
        if chunk.shape[1] < 2:
            break
        with torch.no_grad():
            logp = torch.log_softmax(model(chunk[:, :-1]).logits[0].double(), -1)
        total -= logp.gather(1, chunk[0, 1:, None]).sum().item()
        count += chunk.shape[1] - 1
    return math.exp(total / count)


def test_batched_hflm_scores_cache_and_record(setup, monkeypatch):
    import lm_eval

    import checkpoints_tools.lm_eval_adapter as adapter
    from checkpoints_tools.series import eval_series

    exports, out = setup["exports"], setup["root"] / "eval"
    kwargs = dict(text_files=[str(setup["heldout"])], tasks=["tiny_arith"], include_path=str(setup["tasks"]),
                  seq_length=32, batch_size=4)
    rows = eval_series(exports, out, **kwargs)
    assert [r["tokens"] for r in rows] == [40960, 81920]
    for row, export in zip(rows, sorted(exports.glob("train_*"))):
        assert row["tiny_arith/acc"] == pytest.approx(own_accuracy(export), abs=1e-9)
        assert row["ppl/heldout"] == pytest.approx(own_perplexity(export, HELDOUT, 32), rel=1e-6)
    series = json.loads((out / "series.json").read_text())
    assert series["lm_eval_version"] == lm_eval.__version__
    task = series["tasks"]["tiny_arith"]
    assert task["configs"]["tiny_arith"]["doc_to_text"] == "Question: {{question}}\nAnswer:"
    assert task["n_shot"] == {"tiny_arith": 0} and task["identity"]["yaml_sha256"]
    assert (series["device"], series["dtype"]) == ("cpu", "torch.float32")
    cached = sorted(p.name for p in (out / "cache" / "train_00041K").iterdir())
    assert cached == ["ppl_heldout.json", "task_tiny_arith.json"]

    # A rerun loads no model: every (checkpoint, task) is cached.
    def no_model(*args, **kwargs):
        raise AssertionError("a cached result was evaluated again")

    monkeypatch.setattr(adapter, "hf_lm", no_model)
    assert eval_series(exports, out, **kwargs) == rows
    # A changed setting is new work: --num-fewshot 2 evaluates the task again (not the perplexity).
    monkeypatch.undo()
    loads = []
    real = adapter.hf_lm
    monkeypatch.setattr(adapter, "hf_lm", lambda *a, **k: loads.append(a[0]) or real(*a, **k))
    eval_series(exports, out, **{**kwargs, "num_fewshot": 2})
    assert len(loads) == 2
    series = json.loads((out / "series.json").read_text())
    assert series["num_fewshot"] == 2 and series["tasks"]["tiny_arith"]["n_shot"] == {"tiny_arith": 2}


def write_released_layout(out: Path, tokenizer: Path, seed: int = 3) -> Path:
    """A directory as Baichuan 2 revisions are released: config.json with auto_map and no position
    field, the modeling code beside it, pytorch_model-*.bin shards with an index, tokenizer.model."""
    arch = tiny_arch(vocab=1000, padded=1000)
    src = HFCheckpoint(random_hf_dir(out.parent.parent / f"{out.name}_src", "baichuan", arch, seed=seed))
    out.mkdir(parents=True)
    config = {"architectures": ["BaichuanForCausalLM"], "model_type": "baichuan",
              "auto_map": {"AutoConfig": "configuration_baichuan.BaichuanConfig",
                           "AutoModelForCausalLM": "modeling_baichuan.BaichuanForCausalLM"},
              "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "hidden_act": "silu",
              "hidden_size": 64, "initializer_range": 0.02, "intermediate_size": 96,
              "max_position_embeddings": 128, "model_max_length": 128, "num_attention_heads": 4,
              "num_hidden_layers": 2, "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
              "torch_dtype": "float32", "use_cache": True, "vocab_size": 1000, "z_loss_weight": 0}
    (out / "config.json").write_text(json.dumps(config, indent=2))
    for name in ("configuration_baichuan.py", "modeling_baichuan.py"):
        shutil.copyfile(REPO / "checkpoints_tools" / "hf_templates" / name, out / name)
    names = src.names()
    weight_map = {}
    for i, part in enumerate([names[: len(names) // 2], names[len(names) // 2:]], start=1):
        file = f"pytorch_model-0000{i}-of-00002.bin"
        torch.save({n: src.get(n) for n in part}, out / file)
        weight_map.update(dict.fromkeys(part, file))
    total = sum(src.get(n).numel() * 4 for n in names)
    (out / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                  "weight_map": weight_map}))
    shutil.copyfile(tokenizer, out / "tokenizer.model")
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "model_max_length": 4096, "add_bos_token": False,
        "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "pad_token": "<unk>", "legacy": False, "add_prefix_space": False}))
    return out


def test_released_layout_is_evaluated_and_compared(setup, tok_model, tmp_path):
    from checkpoints_tools.series import eval_series, plot, read_series

    released = tmp_path / "released"
    revision = write_released_layout(released / "train_00220B", tok_model)
    rows = eval_series(released, tasks=["tiny_arith"], include_path=str(setup["tasks"]), batch_size=4,
                       label="released")
    assert rows[0]["name"] == "train_00220B" and rows[0]["tokens"] == 220 * 10**9
    assert rows[0]["tiny_arith/acc"] == pytest.approx(own_accuracy(revision), abs=1e-9)
    assert not (revision / "eval").exists()     # results go to RELEASED/eval, not into the revision

    run_series = setup["root"] / "eval_cmp"
    eval_series(setup["exports"], run_series, tasks=["tiny_arith"], include_path=str(setup["tasks"]),
                batch_size=4, label="ours")
    drawn = plot([read_series(run_series), read_series(released)], tmp_path / "plots")
    ours = [(r["tokens"], r["tiny_arith/acc"]) for r in read_series(run_series)["rows"]]
    assert drawn["plot_tiny_arith_acc.png"]["ours"] == [(t / 10**9, a) for t, a in ours]
    assert drawn["plot_tiny_arith_acc.png"]["released"] == [(220.0, rows[0]["tiny_arith/acc"])]
    assert set(drawn["benchmarks.png"]) == {"tiny_arith/acc (ours)", "tiny_arith/acc (released)"}
    # The CLI: --compare on a cached series (no model loaded again), both PNGs written.
    res = cli("checkpoints_tools", "eval-series", setup["exports"], "--out", run_series, "--tasks", "tiny_arith",
              "--include-path", setup["tasks"], "--batch-size", "4", "--label", "ours",
              "--compare", released / "eval", timeout=None)
    assert res.returncode == 0, res.stderr[-3000:]
    for name in ("benchmarks.png", "plot_tiny_arith_acc.png"):
        assert (run_series / name).read_bytes()[:4] == b"\x89PNG"
    bad = cli("checkpoints_tools", "eval-series", setup["exports"], "--out", run_series, "--tasks", "tiny_arith",
              "--include-path", setup["tasks"], "--compare", tmp_path / "nowhere", timeout=None)
    assert bad.returncode == 2 and "field '--compare': no series.json found" in bad.stderr


def test_make_task_writes_a_cloze_lm_eval_loads(tmp_path):
    from checkpoints_tools.local_tasks import write_cloze_task
    from checkpoints_tools.lm_eval_adapter import task_manager
    from stack_common.errors import UserError

    lines = [f"line number {i} has a beginning and then a distinct ending {i * 7}" for i in range(30)]
    text = tmp_path / "heldout.txt"
    text.write_text("\n".join(lines + ["short", "x" * 500]), encoding="utf-8")
    yaml_path = write_cloze_task(text, tmp_path / "tasks", "cloze_t", n_items=10, seed=3)
    items = [json.loads(line) for line in (tmp_path / "tasks" / "cloze_t.jsonl").read_text().splitlines()]
    assert len(items) == 10
    for item in items:
        whole = item["context"] + item["choices"][item["label"]]
        assert whole in lines                                   # the true ending completes its line
        assert all(item["context"] + c not in lines for i, c in enumerate(item["choices"]) if i != item["label"])
        assert len(set(item["choices"])) == 4
    assert sorted({item["label"] for item in items}) != [0]     # the answer's position varies
    write_cloze_task(text, tmp_path / "again", "cloze_t", n_items=10, seed=3)
    assert (tmp_path / "again" / "cloze_t.jsonl").read_text() == (tmp_path / "tasks" / "cloze_t.jsonl").read_text()
    manager = task_manager(str(yaml_path.parent), ("cloze_t",))
    assert "cloze_t" in manager.task_index
    with pytest.raises(UserError, match="3 usable lines, need at least 4"):
        (tmp_path / "few.txt").write_text("\n".join(lines[:3]))
        write_cloze_task(tmp_path / "few.txt", tmp_path / "few", "few")
