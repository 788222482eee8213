"""Data provenance against what the trainer fed: a DP=2 CPU run on the encoded sample corpus logs
a sha256 of every micro-batch; `batches` (megatron-core's dataset indices, no training) plus the
.bin files must give the same bytes for every step, also after continuing from an export
(--with-optimizer). Also: the encode's document sidecar, `seen` against a brute-force count,
step-0 and log-spaced checkpoints, data_seed / init_seed, and each export's training_state.json."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from _helpers import cli, train_sentencepiece
from stack_common.errors import UserError
from test_pretrain_run import ok, pretrain, scalars

LANGS = ("en", "zh", "code")
SEQ, GLOBAL, STEPS = 32, 8, 6


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """data/sample as shard dirs (an empty-text document in `en`, which encode skips), encoded
    per language in small work units with a 1000-piece tokenizer. Returns (data dir, input rows)."""
    from data_pipeline.schema import DOC_SCHEMA
    from stack_common.shards import write_table
    from tokenizer_training.config import EncodeConfig
    from tokenizer_training.encode import encode

    root = tmp_path_factory.mktemp("provenance")
    rows = {}
    for lang in LANGS:
        t = pq.read_table(f"data/sample/{lang}.parquet").to_pylist()
        if lang == "en":
            t.insert(3, {"id": "empty-1", "source": "test", "lang": "en", "text": ""})
        rows[lang] = t
        table = pa.Table.from_pylist([dict(r, quality_score=0.5, annotations="{}") for r in t], schema=DOC_SCHEMA)
        write_table(root / "shards" / lang, table, target_bytes=200_000)
    tok = train_sentencepiece(root / "tok", 1000)
    encode(tok, [f"{root}/shards/*"], root / "data", EncodeConfig(group_by="lang", workers=1, chunk_mb=0.1))
    return root / "data", rows


def test_encode_sidecar_names_every_document_in_order(corpus, tmp_path):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from tokenizer_training.encode import docs_path, open_docs, read_docs

    data, rows = corpus
    summary = json.loads((data / "encode_summary.json").read_text())
    for lang in LANGS:
        prefix = data / f"{lang}_text_document"
        kept = [r for r in rows[lang] if r["text"]]
        table = read_docs(prefix, len(IndexedDataset(str(prefix))))
        assert table.column("id").to_pylist() == [r["id"] for r in kept]
        assert table.column("source").to_pylist() == [r["source"] for r in kept]
        assert set(table.column("lang").to_pylist()) == {lang}
        assert summary["outputs"][lang]["documents_file"] == docs_path(prefix).name
    assert open_docs(data / "en_text_document", len(rows["en"]) - 1).metadata.num_row_groups > 1  # one per unit
    assert "empty-1" not in read_docs(data / "en_text_document", len(rows["en"]) - 1).column("id").to_pylist()
    short = tmp_path / "en_text_document"
    pq.write_table(pq.read_table(docs_path(data / "en_text_document")).slice(1), docs_path(short))
    with pytest.raises(UserError, match=r"en_text_document\.docs\.parquet.*has 272 rows for 273 documents"):
        read_docs(short, 273)


def run_args(data: Path, run: Path) -> list[str]:
    return [f"data.paths=[{data}/code_text_document,{data}/en_text_document,{data}/zh_text_document]",
            "data.split=[90,10,0]", "model=tiny_rope", f"model.seq_length={SEQ}",
            f"training.train_iters={STEPS}", "training.micro_batch_size=2", f"training.global_batch_size={GLOBAL}",
            "training.eval_interval=3", "training.eval_iters=1", "training.data_seed=11", "training.init_seed=7",
            "faults.log_batch_hashes=true", "optimizer=tiny", "optimizer.warmup_iters=2",
            f"checkpoint.dir={run}", "checkpoint.save_interval=0", "checkpoint.keep_last=1",
            "checkpoint.milestone_step0=true", "checkpoint.milestone_log_steps=4", "logging.log_interval=1"]


def logged_hashes(run: Path) -> dict[tuple[int, int, int], str]:
    """(step, dp rank, micro-batch) -> sha256, from every start of the run."""
    found = {}
    for path in sorted((run / "batch_hashes").glob("dp*-from*.json")):
        for r in json.loads(path.read_text())["records"]:
            found[(r["step"], r["dp_rank"], r["micro"])] = r["sha256"]
    return found


def sample_text(piece_list: list[dict], dataset) -> np.ndarray:
    return np.concatenate([dataset.get(p["document"], offset=p["offset"], length=p["tokens"]) for p in piece_list])


def recomputed_hashes(reports: list[dict]) -> dict[tuple[int, int, int], str]:
    """The micro-batch digests from `batches` output and the .bin files (tokens, then labels)."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    opened, found = {}, {}
    for report in reports:
        for mb in report["micro_batches"]:
            digest = hashlib.sha256()
            for s in mb["samples"]:
                ds = opened.setdefault(s["dataset"], IndexedDataset(s["dataset"]))
                text = sample_text(s["documents"], ds).astype("<i8")
                assert len(text) == SEQ + 1
                digest.update(text[:-1].tobytes())
                digest.update(text[1:].tobytes())
            found[(report["step"], mb["dp_rank"], mb["micro"])] = digest.hexdigest()
    return found


def brute_force_seen(reports: list[dict]) -> dict:
    """Input tokens per language and per dataset: every piece, less each sample's last (label) token."""
    by_lang, by_dataset = {}, {}
    for report in reports:
        for mb in report["micro_batches"]:
            for s in mb["samples"]:
                for i, piece in enumerate(s["documents"]):
                    n = piece["tokens"] - (i == len(s["documents"]) - 1)
                    by_lang[piece["lang"]] = by_lang.get(piece["lang"], 0) + n
                    by_dataset[s["dataset"]] = by_dataset.get(s["dataset"], 0) + n
    return {"lang": {k: v for k, v in by_lang.items() if v}, "dataset": by_dataset}


def initial_embeddings(rank: int, world: int, model: dict, seeds: list[int]) -> list:
    """The trainer's model built right after seeding, once per seed (spawned process)."""
    from _dist_helpers import init_layout
    from pretrain.model import ModelConfig, build_model, unwrap

    out = []
    for seed in seeds:
        init_layout(1, 1, seed=seed)
        chunk = build_model(ModelConfig(**model), tp=1, pp=1)[0]
        out.append(unwrap(chunk).embedding.word_embeddings.weight.detach().clone())
    return out


def test_batches_and_seen_match_what_the_trainer_fed(corpus, tmp_path):
    from _dist_helpers import launch
    from checkpoints_tools import provenance as P
    from checkpoints_tools.dist_reader import DistCheckpointReader

    data, rows = corpus
    run, cont, export = tmp_path / "run", tmp_path / "cont", tmp_path / "export"
    ok(pretrain(2, run_args(data, run)))
    ckpts = run / "checkpoints"
    metas = {p.name: json.loads((p / "meta.json").read_text()) for p in ckpts.glob("iter_*")}
    # Step 0 (before any update) and the log-spaced steps 1, 2, 4 are kept; the final save is rolling.
    assert {n: m["keep"] for n, m in metas.items()} == {
        "iter_0000000": True, "iter_0000001": True, "iter_0000002": True, "iter_0000004": True,
        "iter_0000006": False}
    assert metas["iter_0000000"]["consumed_tokens"] == 0 and metas["iter_0000000"]["progress"]["train_lm_loss"] is None

    # Every micro-batch the trainer fed (2 DP ranks x 2 micro-batches x 6 steps) = `batches` + .bin.
    data_run = P.load_run_data(run, 1)
    assert data_run.dp == 2
    reports = [P.step_batches(data_run, step) for step in range(1, STEPS + 1)]
    fed = logged_hashes(run)
    assert len(fed) == STEPS * 2 * 2 and fed == recomputed_hashes(reports)
    proc = cli("checkpoints_tools", "batches", run, "--step", 5, "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout) == json.loads(P.to_json(reports[4]))
    # Each document is named after the input row it was encoded from (the sidecar is read a row
    # group, i.e. an encode work unit, at a time).
    kept = {lang: [r for r in rows[lang] if r["text"]] for lang in LANGS}
    pieces = [(Path(s["dataset"]).name.split("_")[0], d) for r in reports for mb in r["micro_batches"]
              for s in mb["samples"] for d in s["documents"]]
    assert all((d["id"], d["source"], d["lang"]) == (kept[lang][d["document"]]["id"],
                                                     kept[lang][d["document"]]["source"], lang)
               for lang, d in pieces)
    assert len({d["id"] for _, d in pieces}) > 20
    names = {d["id"] for mb in reports[4]["micro_batches"] for s in mb["samples"] for d in s["documents"]}
    text = P.format_batches(reports[4])
    assert "dp1 micro1:" in text and all(f"id={i}" in text for i in names)

    with pytest.raises(UserError, match=r"field '--step': step 7 needs samples up to 56, the run's train dataset has 49"):
        P.step_batches(data_run, 7)

    # The order is training.data_seed's: seed 1234 (training.seed) would have fed other documents.
    config = json.loads(json.dumps(metas["iter_0000001"]["config"]))
    config["training"]["data_seed"] = 1234
    other = P.step_batches(P.load_run_data(run, 1, dp=2, config=config), 1)
    assert recomputed_hashes([other]) != {k: v for k, v in fed.items() if k[0] == 1}

    # Tokens seen: the vectorized count equals the brute force over every sample of steps 1..6.
    proc = cli("checkpoints_tools", "seen", run, "--step", STEPS, "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen, brute = json.loads(proc.stdout), brute_force_seen(reports)
    assert seen["tokens"] == metas["iter_0000006"]["consumed_tokens"] == STEPS * GLOBAL * SEQ
    assert seen["by_lang"] == brute["lang"] and set(brute["lang"]) == set(LANGS)
    assert {d["dataset"]: d["tokens"] for d in seen["datasets"]} == brute["dataset"]
    # The walk over the document order a window at a time (for long runs) counts the same.
    for ds, samples in zip(data_run.datasets, P.samples_by_dataset(data_run, STEPS * GLOBAL, chunk=5)):
        whole = P.tokens_per_document(ds, samples, SEQ)
        assert all((P.tokens_per_document(ds, samples, SEQ, window=w) == whole).all() for w in (1, 3))

    # The step-0 checkpoint holds the initial weights of training.init_seed (7), not of seed 1234.
    built = launch(1, initial_embeddings, metas["iter_0000000"]["model"], [7, 1234])[0]
    step0 = DistCheckpointReader(ckpts / "iter_0000000").read("embedding.word_embeddings.weight")
    step2 = DistCheckpointReader(ckpts / "iter_0000002").read("embedding.word_embeddings.weight")
    assert torch.equal(step0, built[0]) and not torch.equal(step0, built[1])
    assert not torch.equal(step0, step2)

    # The export carries its moment; the optimizer state continues the run exactly.
    proc = cli("checkpoints_tools", "export-hf", ckpts / "iter_0000004", "--out", export, "--with-optimizer")
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = json.loads((export / "training_state.json").read_text())
    assert (state["iteration"], state["consumed_tokens"], state["consumed_samples"]) == (4, 4 * GLOBAL * SEQ, 4 * GLOBAL)
    assert state["checkpoint"] == str((ckpts / "iter_0000004").resolve())
    assert state["lr"] == pytest.approx(scalars(run, "train/learning_rate")[4], rel=1e-6)
    assert state["train_lm_loss"] == pytest.approx(scalars(run, "train/lm_loss")[4], rel=1e-6)
    assert state["valid"]["iteration"] == 3
    assert state["valid"]["lm_loss"] == pytest.approx(scalars(run, "valid/lm_loss")[3], rel=1e-6)
    want_sha = hashlib.sha256(json.dumps(metas["iter_0000004"]["config"], sort_keys=True).encode()).hexdigest()
    assert state["config_sha256"] == want_sha
    tokens = {o["path_prefix"]: o["tokens"] for o in json.loads((data / "encode_summary.json").read_text())["outputs"].values()}
    assert {b["dataset"]: b["weight"] for b in state["data_blend"]} == pytest.approx(
        {p: n / sum(tokens.values()) for p, n in tokens.items()})
    assert state["tokens_seen"]["by_lang"] == brute_force_seen(reports[:4])["lang"]
    assert state["optimizer_state"] == "megatron_checkpoint"

    ok(pretrain(2, run_args(data, cont) + [f"checkpoint.load={export}/megatron_checkpoint"]))
    assert sorted(scalars(cont, "train/lm_loss")) == [5, 6]
    for step in (5, 6):
        assert scalars(cont, "train/lm_loss")[step] == scalars(run, "train/lm_loss")[step]
    resumed = logged_hashes(cont)
    assert sorted({k[0] for k in resumed}) == [5, 6]
    assert resumed == {k: v for k, v in fed.items() if k[0] >= 5}
