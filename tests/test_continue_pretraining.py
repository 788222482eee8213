"""Continue pretraining from a released Baichuan 2 checkpoint: the position type found from the
shipped code, the architecture taken from the checkpoint, the tokenizer travelling with it.

The fixture is written here in the released layout (config.json without a position field,
`pytorch_model-*.bin` shards with an index, a modeling_baichuan.py, tokenizer.model and a
tokenizer_config.json), not by the project's exporter. Its modeling file holds only the text
markers the importer looks for."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from _helpers import cli, train_sentencepiece
from checkpoints_tools.hf_io import HFCheckpoint
from stack_common.errors import UserError

REPO = Path(__file__).resolve().parents[1]
SHAPE = dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=96,
             vocab_size=1000)
SEQ = 32
TOKENS = torch.randint(3, 1000, (2, SEQ), generator=torch.Generator().manual_seed(7))
CODE = {  # stand-ins for the released modeling files: only the markers matter
    "alibi": "def _get_interleave(n):\n    ...\n\ndef _gen_alibi_mask(tensor, n_head, max_pos):\n    ...\n",
    "rope": "class RotaryEmbedding(torch.nn.Module):\n    ...\n\ndef apply_rotary_pos_emb(q, k, cos, sin):\n    ...\n",
}


def released_tensors(seed: int) -> dict[str, torch.Tensor]:
    """Random weights under the released names (W_pack, NormHead's lm_head), norms too."""
    h, f, v = SHAPE["hidden_size"], SHAPE["intermediate_size"], SHAPE["vocab_size"]
    gen = torch.Generator().manual_seed(seed)
    shapes = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,), "lm_head.weight": (v, h)}
    for i in range(SHAPE["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes.update({p + "self_attn.W_pack.weight": (3 * h, h), p + "self_attn.o_proj.weight": (h, h),
                       p + "mlp.gate_proj.weight": (f, h), p + "mlp.up_proj.weight": (f, h),
                       p + "mlp.down_proj.weight": (h, f), p + "input_layernorm.weight": (h,),
                       p + "post_attention_layernorm.weight": (h,)})
    return {name: (1.0 + 0.2 * torch.randn(shape, generator=gen)) if len(shape) == 1
            else 0.3 * torch.randn(shape, generator=gen) for name, shape in shapes.items()}


def write_released(out: Path, position: str | None, tokenizer: Path, seed: int = 0) -> Path:
    """A Baichuan 2 directory as released: no position field in config.json, .bin shards."""
    out.mkdir(parents=True)
    config = {"architectures": ["BaichuanForCausalLM"], "model_type": "baichuan",
              "auto_map": {"AutoConfig": "configuration_baichuan.BaichuanConfig",
                           "AutoModelForCausalLM": "modeling_baichuan.BaichuanForCausalLM"},
              "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "hidden_act": "silu",
              "initializer_range": 0.02, "model_max_length": 128, "rms_norm_eps": 1e-6,
              "tie_word_embeddings": False, "torch_dtype": "float32", "use_cache": True,
              "z_loss_weight": 0, **SHAPE}
    (out / "config.json").write_text(json.dumps(config, indent=2))
    tensors = released_tensors(seed)
    names = sorted(tensors)
    weight_map = {}
    for i, part in enumerate([names[: len(names) // 2], names[len(names) // 2:]], start=1):
        file = f"pytorch_model-0000{i}-of-00002.bin"
        torch.save({n: tensors[n] for n in part}, out / file)
        weight_map.update(dict.fromkeys(part, file))
    (out / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    if position is not None:
        (out / "modeling_baichuan.py").write_text(CODE[position])
    shutil.copyfile(tokenizer, out / "tokenizer.model")
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "model_max_length": 4096, "add_bos_token": False,
        "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "pad_token": "<unk>", "legacy": False, "add_prefix_space": False,
        "clean_up_tokenization_spaces": False}, indent=2))
    return out


def reference_logits(released: Path, position: str) -> torch.Tensor:
    """Logits of the HF Baichuan model told the position type, on the released weights."""
    from transformers import AutoConfig, AutoModelForCausalLM

    ref_dir = released.parent / f"{released.name}_as_{position}"
    ref_dir.mkdir(exist_ok=True)
    config = json.loads((released / "config.json").read_text())
    (ref_dir / "config.json").write_text(json.dumps({**config, "position_embedding": position}))
    for name in ("configuration_baichuan.py", "modeling_baichuan.py"):
        shutil.copyfile(REPO / "checkpoints_tools" / "hf_templates" / name, ref_dir / name)
    hf = HFCheckpoint(released)   # only its tensors: the position type is the reference's
    config = AutoConfig.from_pretrained(ref_dir, trust_remote_code=True)
    model = AutoModelForCausalLM.from_config(config, trust_remote_code=True, dtype=torch.float32)
    model.load_state_dict({n: hf.get(n) for n in hf.names()}, strict=True)
    with torch.no_grad():
        return model.eval()(TOKENS).logits.float()


def trainer_logits_rank(rank: int, world: int, ckpt: str, out: str) -> None:
    """The trainer's model, built from the checkpoint's recorded architecture, on TOKENS."""
    from pretrain import parallel
    from pretrain.checkpointing import load_model_weights, read_meta
    from pretrain.model import ModelConfig, build_model, unwrap

    parallel.init_distributed(1, 1, seed=1234, backend="gloo")
    try:
        cfg = ModelConfig(**read_meta(ckpt)["model"])
        chunks = build_model(cfg, tp=1, pp=1, dtype=torch.float32)
        load_model_weights(chunks, ckpt)
        position_ids = torch.arange(SEQ)[None].expand(TOKENS.shape[0], -1)
        with torch.no_grad():
            logits = unwrap(chunks[0]).eval()(input_ids=TOKENS, position_ids=position_ids, attention_mask=None)
        torch.save(logits[..., : cfg.vocab_size].float(), out)
    finally:
        parallel.destroy()


def error_lines(res: subprocess.CompletedProcess) -> list[str]:
    """The CLI's error lines (library warnings aside); there must be no traceback."""
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    return [line for line in res.stderr.splitlines() if line.startswith(("error:", "config error:"))]


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> Path:
    return train_sentencepiece(tmp_path_factory.mktemp("tok"), 1000)


@pytest.fixture(scope="module")
def released(tmp_path_factory, tok) -> Path:
    """An ALiBi model of non-13B shape (4 layers x 64), written as the 13B release is."""
    return write_released(tmp_path_factory.mktemp("released") / "Baichuan2-tiny-alibi", "alibi", tok)


@pytest.fixture(scope="module")
def imported(released, tmp_path_factory) -> Path:
    from checkpoints_tools.import_hf import import_hf

    return import_hf(released, tmp_path_factory.mktemp("imported") / "iter_0000000", tp=1, pp=1)


# ----------------------------------------------------------------------------- 1: position type

def test_position_type_from_the_shipped_code_or_a_clear_error(tmp_path, tok):
    for position in ("alibi", "rope"):
        hf = HFCheckpoint(write_released(tmp_path / position, position, tok))
        assert (hf.arch.position, hf.position_source[1]) == (position, "modeling_baichuan.py")
    bare = write_released(tmp_path / "bare", None, tok)
    with pytest.raises(UserError) as err:
        HFCheckpoint(bare)
    assert err.value.one_line() == (
        f"{bare}/config.json, field 'position_embedding': no position_embedding field, and no "
        "modeling_baichuan.py with either ALiBi (_get_interleave/_gen_alibi_mask) or rotary "
        "(RotaryEmbedding/apply_rotary_pos_emb) code to tell the position type "
        "(expected --position rope|alibi)")
    res = cli("checkpoints_tools", "import-hf", bare, "--out", tmp_path / "out")
    assert res.returncode == 2 and error_lines(res) == [f"error: {err.value.one_line()}"]
    assert not (tmp_path / "out").exists()
    assert HFCheckpoint(bare, "alibi").arch.position == "alibi"
    # An explicit field wins over the code; --position may not contradict it.
    config = json.loads((bare / "config.json").read_text())
    (bare / "config.json").write_text(json.dumps({**config, "position_embedding": "rope"}))
    (bare / "modeling_baichuan.py").write_text(CODE["alibi"])
    assert HFCheckpoint(bare).position_source == ("rope", "config.json position_embedding")
    with pytest.raises(UserError, match="--position alibi contradicts config.json's rope"):
        HFCheckpoint(bare, "alibi")


def test_position_may_not_contradict_the_shipped_code(tmp_path, tok):
    alibi = write_released(tmp_path / "alibi", "alibi", tok)
    with pytest.raises(UserError) as err:
        HFCheckpoint(alibi, "rope")
    assert err.value.one_line() == (
        f"{alibi}/modeling_baichuan.py, field '--position': --position rope contradicts "
        "modeling_baichuan.py's alibi code (expected --position alibi or none)")
    assert HFCheckpoint(alibi, "alibi").position_source == ("alibi", "--position")


def test_llama_rope_theta_is_carried_over(tmp_path):
    from checkpoints_tools.hf_io import arch_from_hf_config

    llama = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "intermediate_size": 96, "vocab_size": 1000,
             "max_position_embeddings": 256, "rope_theta": 500000.0}
    arch = arch_from_hf_config(llama, "config.json")
    assert (arch.position, arch.rope_base, arch.num_query_groups, arch.seq_length) == ("rope", 500000.0, 2, 256)
    new_style = {**llama, "rope_theta": None, "rope_parameters": {"rope_type": "default", "rope_theta": 1e6}}
    assert arch_from_hf_config(new_style, "config.json").rope_base == 1e6


def test_alibi_model_of_non_13b_shape_imports_with_the_released_logits(released, imported, tmp_path):
    from pretrain.parallel import run_local

    meta = json.loads((imported / "meta.json").read_text())
    assert meta["architecture"]["position"] == meta["model"]["position_embedding_type"] == "alibi"
    assert meta["layer_build"] == {"spec": "local", "final_norm": "WrappedTorchNorm", "core_attention": "SDPAttention"}
    assert meta["imported_from"]["position_from"] == "modeling_baichuan.py"
    assert (meta["model"]["num_layers"], meta["model"]["hidden_size"]) == (4, 64)
    run_local(1, trainer_logits_rank, str(imported), str(tmp_path / "logits.pt"), timeout=300)
    got = torch.load(tmp_path / "logits.pt")
    alibi, rope = reference_logits(released, "alibi"), reference_logits(released, "rope")
    assert (alibi - rope).abs().max() > 0.5          # importing it as RoPE would show
    diff = (got - alibi).abs().max().item()
    print(f"max |logits(imported, trainer) - logits(HF ALiBi)| = {diff:.3g}")
    assert diff < 1e-5


def test_a_bad_tokenizer_is_refused_before_any_weight_is_converted(released, tmp_path, monkeypatch):
    import checkpoints_tools.import_hf as imp

    def no_conversion(*args, **kwargs):
        raise AssertionError("weights converted before the tokenizer was checked")

    monkeypatch.setattr("pretrain.parallel.run_local", no_conversion)
    missing, out = tmp_path / "nowhere" / "tokenizer.model", tmp_path / "out"
    with pytest.raises(UserError) as err:
        imp.import_hf(released, out, tokenizer=str(missing))
    assert err.value.one_line() == (f"{missing}, field '--tokenizer': no such file "
                                    "(expected a SentencePiece tokenizer.model)")
    (tmp_path / "junk.model").write_bytes(b"not a sentencepiece model")
    with pytest.raises(UserError, match="not a SentencePiece model"):
        imp.import_hf(released, out, tokenizer=str(tmp_path / "junk.model"))
    big = train_sentencepiece(tmp_path / "big_tok", 1300)
    with pytest.raises(UserError) as err:
        imp.import_hf(released, out, tokenizer=str(big))
    assert err.value.one_line() == (f"{big}, field '--tokenizer': the tokenizer has 1300 pieces, more than "
                                    "the model's vocab_size 1000 (expected the model's own tokenizer)")
    assert not out.exists() and not list(tmp_path.glob(".out.import.tmp"))


def test_another_tokenizer_travels_without_the_releases_tokenizer_config(released, tok, tmp_path):
    """--tokenizer X: the release's tokenizer_config.json etc. describe its own tokenizer, not X;
    they travel only when X is the release's tokenizer.model (same sha256)."""
    from checkpoints_tools.export import tokenizer_from_meta
    from checkpoints_tools.import_hf import carry_tokenizer

    other = train_sentencepiece(tmp_path / "other_tok", 900)
    same = tmp_path / "same" / "tokenizer.model"
    same.parent.mkdir()
    shutil.copyfile(tok, same)
    hf = HFCheckpoint(released)
    for model, files in ((other, ["tokenizer.model"]),
                         (same, ["tokenizer.model", "tokenizer_config.json"])):
        ckpt = tmp_path / f"ckpt_{model.parent.name}"
        ckpt.mkdir()
        entry = carry_tokenizer(hf, model, ckpt, ckpt)
        assert entry["files"] == files and sorted(p.name for p in (ckpt / "tokenizer").iterdir()) == sorted(files)
        # export-hf converts a bare tokenizer.model; a carried release config is copied as is
        want = ckpt / "tokenizer" if len(files) > 1 else ckpt / "tokenizer" / "tokenizer.model"
        assert tokenizer_from_meta({"tokenizer": entry}, ckpt) == str(want)


# ----------------------------------------------------------------------------- data

@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """data/sample (en, zh) as a pipeline-style shard directory."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from data_pipeline.schema import DOC_SCHEMA
    from stack_common.shards import write_table

    tables = [pq.read_table(REPO / "data" / "sample" / f"{lang}.parquet") for lang in ("en", "zh")]
    t = pa.concat_tables([x.select(["id", "text", "lang", "source"]) for x in tables])
    table = pa.table({"id": t["id"], "text": t["text"], "lang": t["lang"], "source": t["source"],
                      "quality_score": pa.array([0.5] * t.num_rows, pa.float32()),
                      "annotations": ["{}"] * t.num_rows}, schema=DOC_SCHEMA)
    out = tmp_path_factory.mktemp("shards") / "final"
    write_table(out, table, target_bytes=2_000_000)
    return out


def pretrain_args(ckpt: Path, data: Path, run_dir: Path, iters: int = 4) -> list[str]:
    return [f"checkpoint.load={ckpt}", f"data.paths=[{data}/en_text_document,{data}/zh_text_document]",
            "training.seq_length=32", f"training.train_iters={iters}", "training.micro_batch_size=2",
            "training.global_batch_size=4", "training.eval_interval=2", "training.eval_iters=1",
            "optimizer=tiny", "optimizer.warmup_iters=1", f"checkpoint.dir={run_dir}",
            "checkpoint.save_interval=2", "logging.log_interval=1", "logging.tensorboard=false"]


# ----------------------------------------------------------------------------- 2: architecture

def run_config(*overrides: str):
    """load_run_config on the composed pretrain config, Hydra's command line set as in a run."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from pretrain.config import load_run_config
    from stack_common.config import config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name="pretrain", overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    try:
        return load_run_config(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), world_size=1)
    finally:
        HydraConfig.instance().cfg = None


def test_a_load_directory_without_a_checkpoint_is_a_config_error(tmp_path):
    from stack_common.errors import ConfigError

    (tmp_path / "cont").mkdir()
    with pytest.raises(ConfigError) as err:
        run_config(f"checkpoint.load={tmp_path}/cont", f"checkpoint.dir={tmp_path}/run")
    assert err.value.problems[0] == (f"checkpoint.load: {tmp_path}/cont has no meta.json "
                                     "(give an iter_* directory or a run directory)")



@pytest.fixture(scope="module")
def tokens(imported, shards, tmp_path_factory) -> Path:
    """The shards encoded with the tokenizer the imported checkpoint carries."""
    from tokenizer_training.config import EncodeConfig
    from tokenizer_training.encode import encode

    out = tmp_path_factory.mktemp("tokens") / "tokens"
    encode(imported / "tokenizer" / "tokenizer.model", [str(shards)], out, EncodeConfig(workers=1))
    return out


def test_a_differing_model_override_is_one_line_per_field(imported, tokens, tmp_path):
    run_dir = tmp_path / "run"
    res = cli("pretrain", *pretrain_args(imported, tokens, run_dir), "model=tiny_rope", "model.hidden_size=128")
    assert res.returncode == 2, res.stderr[-3000:]
    assert error_lines(res) == [
        "config error: model.hidden_size: checkpoint has 64, config says 128",
        "config error: model.ffn_hidden_size: checkpoint has 96, config says 176",
        "config error: model.vocab_size: checkpoint has 1000, config says 8000",
        "config error: model.position_embedding_type: checkpoint has alibi, config says rope"]
    assert not (run_dir / "checkpoints").exists()


def test_model_field_overrides_without_model_group(imported, tokens, tmp_path):
    """`model.X=` without `model=`: applied on top of the checkpoint's architecture; fields no
    weight depends on (seq_length, z-loss; rotary_base of an ALiBi model) may differ."""
    from stack_common.errors import ConfigError

    args = pretrain_args(imported, tokens, tmp_path / "run")
    model = run_config(*args, "model.seq_length=256", "model.z_loss_coeff=0.0", "model.rotary_base=5e5").model
    assert (model.seq_length, model.z_loss_coeff, model.rotary_base) == (256, 0.0, 5e5)
    assert (model.hidden_size, model.num_layers, model.ffn_hidden_size, model.vocab_size,
            model.position_embedding_type) == (64, 4, 96, 1000, "alibi")
    with pytest.raises(ConfigError) as err:
        run_config(*args, "model.num_layers=2", "model.untie_embeddings_and_output_weights=false")
    assert err.value.problems == [
        "model.num_layers: checkpoint has 4, config says 2",
        "model.untie_embeddings_and_output_weights: checkpoint has True, config says False"]


def test_a_resume_takes_the_architecture_of_the_runs_own_checkpoint(imported, tokens, tmp_path):
    meta = json.loads((imported / "meta.json").read_text())
    meta.pop("imported_from")
    meta["model"] = {**meta["model"], "num_layers": 2, "seq_length": 64}
    own = tmp_path / "run" / "checkpoints" / "iter_0000002"
    own.mkdir(parents=True)
    (own / "meta.json").write_text(json.dumps(meta))
    (own / "metadata.json").write_text("{}")
    model = run_config(*pretrain_args(imported, tokens, tmp_path / "run")).model
    assert (model.num_layers, model.seq_length, model.position_embedding_type) == (2, 64, "alibi")


# ----------------------------------------------------------------------------- 3: tokenizer

def test_data_encoded_with_another_tokenizer_is_refused(imported, shards, tmp_path):
    """Every data path's encode_summary.json is checked: one line per path encoded with another
    tokenizer; a path whose tokenizer is unknown is a warning."""
    from stack_common.atomic import sha256_file
    from tokenizer_training.config import EncodeConfig
    from tokenizer_training.encode import encode

    other = train_sentencepiece(tmp_path / "other_tok", 900)
    theirs, ours, unknown = tmp_path / "theirs", tmp_path / "ours", tmp_path / "unknown"
    encode(other, [str(shards)], theirs, EncodeConfig(workers=1))
    ckpt_tok = imported / "tokenizer" / "tokenizer.model"
    summary = json.loads((theirs / "encode_summary.json").read_text())
    for out, tok in ((ours, {"model": str(ckpt_tok), "sha256": sha256_file(ckpt_tok)}),
                     (unknown, {"model": None, "sha256": None})):
        shutil.copytree(theirs, out)   # the same token files, told as encoded with `tok`
        (out / "encode_summary.json").write_text(json.dumps({**summary, "tokenizer_sha256": None,
                                                             "tokenizer": {**summary["tokenizer"], **tok}}))
    args = pretrain_args(imported, ours, tmp_path / "run")
    args[1] = f"data.paths=[{ours}/en_text_document,{theirs}/zh_text_document,{unknown}/en_text_document]"
    res = cli("pretrain", *args)
    assert res.returncode == 2
    assert error_lines(res) == [
        f"config error: data.paths[1]={theirs}/zh_text_document: encoded with tokenizer {other.resolve()} "
        f"(sha256 {sha256_file(other)[:12]}), the checkpoint's ({imported}/meta.json) is {ckpt_tok.resolve()} "
        f"(sha256 {sha256_file(ckpt_tok)[:12]})"]
    assert f"data.paths[2]={unknown}/en_text_document: tokenizer unknown" in res.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


# ----------------------------------------------------------------------------- 4: end to end

PROBE = "  Baichuan 2 在2023年9月发布。\tTabs and    spaces\ndef f(x):\n    return x ** 2  # 平方 😀"


def test_continue_from_a_released_checkpoint_end_to_end(released, shards, tmp_path):
    """The README's sequence: import at TP=2, encode with the checkpoint's tokenizer, train with the
    architecture from the checkpoint at TP=1, export; the export's tokenizer is the release's."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ckpt, data, run_dir, out = tmp_path / "imported", tmp_path / "tokens", tmp_path / "run", tmp_path / "hf"
    steps = [("checkpoints_tools", "import-hf", released, "--out", ckpt, "--tp", "2"),
             ("tokenizer_training", "encode", f"model_file={ckpt}/tokenizer/tokenizer.model",
              f"input=[{shards}]", f"out={data}", "encode.workers=1"),
             ("pretrain", *pretrain_args(ckpt, data, run_dir, iters=4)),
             ("checkpoints_tools", "export-hf", run_dir, "--format", "baichuan", "--out", out)]
    for step in steps:
        res = cli(*step)
        print("$ python -m", " ".join(map(str, step)))
        print("\n".join(l for l in (res.stdout + res.stderr).splitlines()
                        if " INFO " in l or l.startswith(("{", " ", "}", "error"))))
        assert res.returncode == 0, res.stderr[-4000:]
    trained = run_dir / "checkpoints" / "iter_0000004"
    meta = json.loads((trained / "meta.json").read_text())
    assert (meta["model"]["position_embedding_type"], meta["model"]["hidden_size"]) == ("alibi", 64)
    assert meta["tokenizer"]["sha256"] == json.loads((ckpt / "meta.json").read_text())["tokenizer"]["sha256"]
    assert (trained / "tokenizer" / "tokenizer_config.json").read_text() == \
        (released / "tokenizer_config.json").read_text()
    # The export's tokenizer behaves as the release's: the ids SentencePiece gives with the
    # release's tokenizer.model (what the data was encoded with), model_max_length, no BOS added.
    import sentencepiece as spm

    ours, theirs = (AutoTokenizer.from_pretrained(d, trust_remote_code=True) for d in (out, released))
    want = spm.SentencePieceProcessor(model_file=str(released / "tokenizer.model")).encode(PROBE)
    assert ours(PROBE)["input_ids"] == want and len(want) > 10
    assert ours.model_max_length == theirs.model_max_length == 4096
    assert ours("a")["input_ids"][0] != ours.bos_token_id and ours.eos_token_id == 2
    config = json.loads((out / "config.json").read_text())
    assert (config["position_embedding"], config["num_hidden_layers"]) == ("alibi", 4)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, trust_remote_code=True)
    with torch.no_grad():
        trained_logits = model(TOKENS).logits
    assert torch.isfinite(trained_logits).all()
    # Training moved the weights away from the release's.
    assert (trained_logits - reference_logits(released, "alibi")).abs().max() > 1e-4
