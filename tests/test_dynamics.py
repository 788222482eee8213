"""`dynamics EXPORTS`: every number checked against a direct torch computation on whole tensors,
read in small blocks of rows; token frequency from training data counts or piece scores; train
loss and max logit taken from TensorBoard at the checkpoints' iterations."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from _helpers import cli, train_sentencepiece
from checkpoints_tools.hf_io import HFCheckpoint
from test_checkpoints_tools import megatron_globals, random_hf_dir, tiny_arch, write_dist_checkpoint

ITERATIONS = [(10, 40960), (20, 81920), (32, 131072)]


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """Three baichuan-format exports (with tokenizer), the HF sources they came from, a
    TensorBoard log of the run and an encoded dataset with known token counts."""
    from checkpoints_tools.series import export_series

    root = tmp_path_factory.mktemp("dyn")
    tok = train_sentencepiece(root / "tok", 1000)
    arch = tiny_arch()
    ckpts = root / "RUN" / "checkpoints"
    ckpts.mkdir(parents=True)
    sources = []
    for i, (iteration, tokens) in enumerate(ITERATIONS):
        hf = HFCheckpoint(random_hf_dir(root / f"src{i}", "baichuan", arch, seed=20 + i))
        write_dist_checkpoint(ckpts / f"iter_{iteration:07d}", megatron_globals(hf, arch.padded_vocab_size),
                              arch, iteration, tokens)
        sources.append(hf.dir)
    (ckpts / "latest").write_text("iter_0000032\n")
    export_series(root / "RUN", root / "exports", fmt="baichuan", tokenizer=tok)
    write_tensorboard(root / "RUN" / "tensorboard")
    counts = write_data(root / "data" / "train", tok)
    return {"root": root, "exports": root / "exports", "sources": sources, "tok": tok,
            "tb": root / "RUN" / "tensorboard", "data": str(root / "data" / "train"), "counts": counts}


def write_tensorboard(tb_dir: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tb_dir))
    for step in range(5, 31, 5):   # logged every 5 steps: iteration 32 takes step 30's values
        writer.add_scalar("train/lm_loss", 10.0 - step / 10, step)
        writer.add_scalar("train/max_logit", step / 2, step)
    writer.close()


def ordinary_ids(tok: Path) -> list[int]:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(tok))
    return [i for i in range(sp.get_piece_size()) if sp.IdToPiece(i) not in ("<unk>", "<s>", "</s>")
            and not sp.IdToPiece(i).startswith(("<unused_", "<reserved_", "<0x"))]


def write_data(prefix: Path, tok: Path) -> dict[int, int]:
    """An indexed dataset in which ordinary piece k (in a shuffled order) occurs k + 1 times."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    ids = ordinary_ids(tok)
    random.Random(0).shuffle(ids)
    counts = {token: k + 1 for k, token in enumerate(ids)}
    stream = [token for token, n in counts.items() for _ in range(n)]
    random.Random(1).shuffle(stream)
    prefix.parent.mkdir(parents=True)
    builder = IndexedDatasetBuilder(str(prefix) + ".bin", dtype=np.uint16)
    for start in range(0, len(stream), 500):
        builder.add_item(torch.tensor(stream[start:start + 500]))
        builder.end_document()
    builder.finalize(str(prefix) + ".idx")
    return counts


def test_numbers_match_a_direct_computation(series, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    import checkpoints_tools.dynamics as dyn

    monkeypatch.setattr(dyn, "BLOCK_ROWS", 64)   # 1000-row tensors read in 16 blocks
    seen = []
    original = dyn.SafetensorsModel.blocks

    def spy(self, name, block_rows=None):
        for block in original(self, name, block_rows):
            seen.append(block.shape[0] if block.dim() == 2 else 0)
            yield block

    monkeypatch.setattr(dyn.SafetensorsModel, "blocks", spy)
    report = dyn.training_dynamics(series["exports"], tmp_path / "out", tb_dir=series["tb"], data=[series["data"]])
    assert max(seen) == 64
    exports = sorted(series["exports"].glob("train_*"))
    full = [load_file(str(e / "model.safetensors")) for e in exports]
    rows = {(r["export"], r["tensor"]): r for r in report.tensors}
    for k, (export, tensors) in enumerate(zip(exports, full)):
        for name, w in tensors.items():
            row = rows[export.name, name]
            assert row["norm"] == pytest.approx(torch.linalg.norm(w.double()).item(), rel=1e-6)
            if k == 0:
                assert row["relative_change"] is None
            else:
                prev = full[k - 1][name].double()
                want = (torch.linalg.norm(w.double() - prev) / torch.linalg.norm(prev)).item()
                assert row["relative_change"] == pytest.approx(want, rel=1e-6), name
    assert rows[exports[0].name, "model.layers.1.mlp.down_proj.weight"]["layer"] == 1
    assert rows[exports[0].name, "model.layers.1.mlp.down_proj.weight"]["module"] == "mlp.down_proj"
    # NormHead statistics are of the raw rows (the sources' lm_head), not the stored unit rows.
    ordered = sorted(series["counts"], key=series["counts"].get)
    decile = int(len(ordered) * 0.1)
    frequent, rare = ordered[-decile:], ordered[:decile]
    for summary, source, tensors in zip(report.exports, series["sources"], full):
        raw = HFCheckpoint(source).get("lm_head.weight").norm(dim=1)
        assert summary["head_row_norm_mean"] == pytest.approx(raw.mean().item(), rel=1e-6)
        assert summary["head_row_norm_max"] == pytest.approx(raw.max().item(), rel=1e-6)
        assert summary["head_row_norm_std"] == pytest.approx(raw.std().item(), rel=1e-5)
        embed = tensors["model.embed_tokens.weight"].norm(dim=1)
        assert summary["embed_norm_frequent"] == pytest.approx(embed[frequent].mean().item(), rel=1e-6)
        assert summary["embed_norm_rare"] == pytest.approx(embed[rare].mean().item(), rel=1e-6)
    assert report.frequency_source.startswith("training data token counts")
    # TensorBoard: the value logged at the iteration, or the last one before it (32 -> 30).
    assert [s["iteration"] for s in report.exports] == [10, 20, 32]
    assert [s["train_loss"] for s in report.exports] == pytest.approx([9.0, 8.0, 7.0])
    assert [s["max_logit"] for s in report.exports] == pytest.approx([5.0, 10.0, 15.0])
    for png in ("weight_norms", "relative_change", "normhead_row_norms", "embedding_norms", "train_loss_max_logit"):
        assert (tmp_path / "out" / f"{png}.png").read_bytes()[:4] == b"\x89PNG"
    table = json.loads((tmp_path / "out" / "dynamics.json").read_text())
    assert len(table["tensors"]) == 3 * len(full[0]) and table["frequency_source"] == report.frequency_source
    assert (tmp_path / "out" / "dynamics.csv").read_text().startswith("export,tokens,iteration,tensor,layer")


def test_cli_finds_tensorboard_and_falls_back_to_piece_scores(series, tmp_path):
    import sentencepiece as spm

    from checkpoints_tools.dynamics import token_frequency

    res = cli("checkpoints_tools", "dynamics", series["exports"], "--out", tmp_path / "out", timeout=None)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "token frequency: tokenizer piece scores" in res.stdout
    summary = json.loads((tmp_path / "out" / "dynamics.json").read_text())["exports"]
    assert [s["train_loss"] for s in summary] == pytest.approx([9.0, 8.0, 7.0])  # RUN/tensorboard found
    freq = token_frequency(sorted(series["exports"].glob("train_*"))[-1], 1000)
    sp = spm.SentencePieceProcessor(model_file=str(series["tok"]))
    assert min(sp.get_score(int(i)) for i in freq.frequent) >= max(sp.get_score(int(i)) for i in freq.rare)
    assert set(freq.frequent) <= set(ordinary_ids(series["tok"]))
    bad = cli("checkpoints_tools", "dynamics", series["exports"], "--tensorboard", tmp_path / "none", timeout=None)
    assert bad.returncode == 2 and "field '--tensorboard'" in bad.stderr


def test_released_bin_shards_read_as_the_safetensors_export(series, tmp_path):
    """Released Baichuan 2 revisions ship pytorch_model-*.bin shards (raw lm_head rows): read
    memory-mapped, they give the numbers of the same tensors in safetensors."""
    from safetensors.torch import load_file

    from checkpoints_tools.dynamics import SafetensorsModel, row_norms, tensor_norm

    export = sorted(series["exports"].glob("train_*"))[0]
    tensors = load_file(str(export / "model.safetensors"))
    names = sorted(tensors)
    released = tmp_path / "train_00220B"
    released.mkdir()
    weight_map = {}
    for i, part in enumerate([names[: len(names) // 2], names[len(names) // 2:]], start=1):
        torch.save({n: tensors[n] for n in part}, released / f"pytorch_model-0000{i}-of-00002.bin")
        weight_map.update(dict.fromkeys(part, f"pytorch_model-0000{i}-of-00002.bin"))
    (released / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    ours, theirs = SafetensorsModel(export), SafetensorsModel(released)
    assert theirs.names() == ours.names()
    for name in names:
        assert tensor_norm(theirs, name) == pytest.approx(tensor_norm(ours, name), rel=1e-12)
    assert torch.equal(row_norms(theirs, "lm_head.weight"), row_norms(ours, "lm_head.weight"))
