"""Export fixes of issue 17: lm_head for models trained without NormHead, lm_head rows stored
normalized (what llama.cpp's Baichuan converter reads as a plain linear head), the tokenizer's
model_max_length, and control-symbol strings in raw text encoded as SentencePiece encodes them."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from _helpers import train_sentencepiece
from checkpoints_tools.export import ROW_NORMS_FILE, ROW_NORMS_KEY, export_hf
from checkpoints_tools.hf_io import HFCheckpoint
from stack_common.errors import UserError
from test_checkpoints_tools import megatron_globals, random_hf_dir, tiny_arch, write_dist_checkpoint

IDS = torch.randint(3, 1000, (2, 20), generator=torch.Generator().manual_seed(3))
CONTROL_TEXT = "a</s>b <s> x<reserved_106>y <reserved_107> <unk> <unused_3> </s>"


@pytest.fixture(scope="module")
def tok_model(tmp_path_factory) -> Path:
    return train_sentencepiece(tmp_path_factory.mktemp("tok"), 1000)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A RoPE model as a HF directory (raw lm_head rows of norm ~2.3, not 1) and as a dist checkpoint."""
    root = tmp_path_factory.mktemp("src")
    arch = tiny_arch()
    hf_dir = random_hf_dir(root / "hf", "baichuan", arch, seed=5)
    ckpt = write_dist_checkpoint(root / "iter_0000010", megatron_globals(HFCheckpoint(hf_dir), arch.padded_vocab_size),
                                 arch, 10, 40960)
    return hf_dir, ckpt


def with_normhead(ckpt: Path, tmp_path: Path, normhead: bool) -> Path:
    import shutil

    dst = tmp_path / f"normhead_{normhead}" / ckpt.name
    shutil.copytree(ckpt, dst)
    meta = json.loads((dst / "meta.json").read_text())
    meta["model"]["normhead"] = normhead
    (dst / "meta.json").write_text(json.dumps(meta))
    return dst


def logits(model_dir: Path) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=True, dtype=torch.float32)
    with torch.no_grad():
        return model.eval()(IDS).logits


def test_normhead_false_keeps_lm_head_raw_and_refuses_the_baichuan_format(source, tmp_path):
    hf_dir, ckpt = source
    raw = HFCheckpoint(hf_dir).get("lm_head.weight")
    assert (raw.norm(dim=1) - 1).abs().mean() > 0.3     # far from normalized: a fold would show
    plain = with_normhead(ckpt, tmp_path, False)
    out = export_hf(plain, tmp_path / "llama", fmt="llama")
    assert torch.equal(HFCheckpoint(out).get("lm_head.weight"), raw)
    assert not (out / ROW_NORMS_FILE).exists()
    assert "normhead: false" in json.loads((out / "export_meta.json").read_text())["normhead"]
    with pytest.raises(UserError, match="field 'model.normhead'.*always applies NormHead") as err:
        export_hf(plain, tmp_path / "bc", fmt="baichuan")
    assert "\n" not in str(err.value) and not (tmp_path / "bc").exists()
    # Trained with NormHead (the default), the llama export folds it into the rows.
    folded = export_hf(with_normhead(ckpt, tmp_path, True), tmp_path / "llama_nh", fmt="llama")
    assert torch.allclose(HFCheckpoint(folded).get("lm_head.weight").norm(dim=1), torch.ones(raw.shape[0]), atol=1e-6)


def test_baichuan_export_stores_normalized_rows_with_unchanged_logits(source, tmp_path):
    """The exported lm_head read as a plain linear layer (as llama.cpp's converter does: it maps
    lm_head.weight to the output tensor unchanged) gives the logits of NormHead on the raw rows."""
    hf_dir, ckpt = source
    raw = HFCheckpoint(hf_dir).get("lm_head.weight")
    out = export_hf(ckpt, tmp_path / "bc", fmt="baichuan")
    stored = HFCheckpoint(out).get("lm_head.weight")
    assert torch.allclose(stored.norm(dim=1), torch.ones(raw.shape[0]), atol=1e-6)
    assert torch.allclose(stored, raw / raw.norm(dim=1, keepdim=True), atol=1e-7)
    from safetensors.torch import load_file

    assert torch.allclose(load_file(str(out / ROW_NORMS_FILE))[ROW_NORMS_KEY], raw.norm(dim=1), rtol=1e-6)
    # HF logits unchanged: the source (raw rows, NormHead at run time) vs the export.
    want = logits(hf_dir)
    assert (logits(out) - want).abs().max() < 1e-5
    # A plain linear head over the stored rows gives the same logits (no second normalization).
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True, dtype=torch.float32).eval()
    with torch.no_grad():
        hidden = model.model(IDS).last_hidden_state
    assert (hidden @ stored.T - want).abs().max() < 1e-5
    # Normalizing twice changes nothing: an export of the export's rows keeps them bit for bit.
    from checkpoints_tools.export import head_for_export

    assert torch.equal(head_for_export(stored, True), stored)


def test_exported_tokenizer_has_model_max_length_and_plain_text_control_symbols(source, tok_model, tmp_path):
    import sentencepiece as spm
    from transformers import AutoTokenizer

    _, ckpt = source
    out = export_hf(ckpt, tmp_path / "bc", fmt="baichuan", tokenizer=tok_model)
    tok = AutoTokenizer.from_pretrained(out, trust_remote_code=True)
    assert tok.model_max_length == tiny_arch().seq_length == 128
    sp = spm.SentencePieceProcessor(model_file=str(tok_model))
    want = sp.encode(CONTROL_TEXT)
    assert tok(CONTROL_TEXT)["input_ids"] == want
    assert 2 not in want and sp.piece_to_id("<reserved_106>") not in want   # text, not control ids
    # Control ids are still reachable as ids.
    assert tok.eos_token_id == 2 and tok.convert_tokens_to_ids("<reserved_106>") == sp.piece_to_id("<reserved_106>")
    # lm-eval's backend encodes requests through the same tokenizer.
    from checkpoints_tools.lm_eval_adapter import hf_lm

    assert hf_lm(out, batch_size=2).tok_encode(CONTROL_TEXT) == want


def test_a_carried_tokenizer_config_gains_only_what_it_lacks(tmp_path):
    from checkpoints_tools.hf_io import complete_tokenizer_config

    path = tmp_path / "tokenizer_config.json"
    path.write_text(json.dumps({"model_max_length": 4096, "tokenizer_class": "LlamaTokenizer"}))
    complete_tokenizer_config(path, 128)
    assert json.loads(path.read_text()) == {"model_max_length": 4096, "tokenizer_class": "LlamaTokenizer",
                                            "split_special_tokens": True}
    path.write_text(json.dumps({"tokenizer_class": "LlamaTokenizer"}))
    complete_tokenizer_config(path, 128)
    assert json.loads(path.read_text())["model_max_length"] == 128
