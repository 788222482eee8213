"""Tokenizer: Baichuan 2 settings, special ids, guard, HF parity, evaluation, megatron encode.

One small tokenizer (tokenizer=small, 8000 pieces) is trained once per session on shard dirs
built from data/sample and shared by every test.
"""
import random
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sentencepiece as spm

from data_pipeline.schema import DOC_SCHEMA
from stack_common.atomic import read_json
from stack_common.errors import UserError
from stack_common.shards import read_table, write_table
from tokenizer_training.__main__ import load_config, main
from tokenizer_training.config import EncodeConfig

LANGS = ("en", "zh", "code")
MIXED = ["Baichuan 2 在2023年9月发布，词表125696个。\tTabs\t\tand     spaces, 3.14159 和 1,000,000\n",
         "def f(x):\n\tif x > 10:\n        return x ** 2  # 平方\n    return 0\n",
         "emoji 😀🚀👩‍👩‍👧 rare CJK 𠀀𪚥𰻞 龘 ﬁ Ａ１ —— «quotes» ✓", "    leading spaces", "", "\n\n\n", "١٢٣ ٤٥"]
CONTROL_STRINGS = ["end of one</s>start of the next", "<s>[INST] hi", "x<reserved_106>y <reserved_107>", "<unk>",
                   "</s>", "<unused_3> 与 <reserved_106>\n"]


@pytest.fixture(scope="session")
def shard_dirs(tmp_path_factory):
    """data/sample as pipeline-style shard dirs (DOC_SCHEMA), one per language, several shards each."""
    root = tmp_path_factory.mktemp("tok_shards")
    for lang in LANGS:
        t = pq.read_table(f"data/sample/{lang}.parquet")
        n = t.num_rows
        table = pa.table({"id": t["id"], "text": t["text"], "lang": t["lang"], "source": t["source"],
                          "quality_score": pa.array([0.5] * n, pa.float32()), "annotations": ["{}"] * n},
                         schema=DOC_SCHEMA)
        write_table(root / lang, table, target_bytes=300_000)
    return root


@pytest.fixture(scope="session")
def trained(shard_dirs, tmp_path_factory):
    from tokenizer_training.train import train

    out = tmp_path_factory.mktemp("tok") / "small"
    summary = train(load_config(["tokenizer=small", f"input=[{shard_dirs}/*]", f"out={out}"]))
    return out, summary


@pytest.fixture(scope="session")
def sp(trained):
    return spm.SentencePieceProcessor(model_file=str(trained[0] / "tokenizer.model"))


@pytest.fixture(scope="session")
def hf_dir(trained, tmp_path_factory):
    from tokenizer_training.export_hf import export_hf_tokenizer

    return export_hf_tokenizer(trained[0] / "tokenizer.model", tmp_path_factory.mktemp("hf") / "tok")


@pytest.fixture(scope="session")
def encoded(trained, shard_dirs, tmp_path_factory):
    from tokenizer_training.encode import encode

    out = tmp_path_factory.mktemp("enc") / "lang"
    summary = encode(trained[0] / "tokenizer.model", [f"{shard_dirs}/*"], out,
                     EncodeConfig(group_by="lang", workers=2, chunk_mb=0.25))
    return out, summary


def test_special_and_reserved_ids(sp, trained):
    _, summary = trained
    assert [sp.id_to_piece(i) for i in range(3)] == ["<unk>", "<s>", "</s>"]
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id()) == (0, 1, 2)
    assert sp.piece_to_id("<reserved_106>") == 195 and sp.piece_to_id("<reserved_107>") == 196
    assert all(sp.is_control(i) for i in range(1, 291)) and not sp.is_control(291)
    assert sp.id_to_piece(291) == "<0x00>" and sp.is_byte(291) and sp.id_to_piece(546) == "<0xFF>"
    assert sp.get_piece_size() == summary["vocab_size"] == 8000
    assert summary["chat_token_ids"] == {"<reserved_106>": 195, "<reserved_107>": 196}
    assert (summary["eod_id"], summary["pad_id"]) == (2, 0)


def test_digits_are_split(sp):
    text = "In 2023, 125696 pieces cost $3.50; 第12345号 and x=987654321."
    pieces = sp.encode(text, out_type=str)
    digit_pieces = [p for p in pieces if re.search(r"\d", p)]
    assert len(digit_pieces) >= len(re.findall(r"\d", text))  # one piece per digit at least
    assert all(len(re.findall(r"\d", p)) == 1 for p in digit_pieces), digit_pieces
    learned = [sp.id_to_piece(i) for i in range(sp.get_piece_size()) if not (sp.is_byte(i) or sp.is_control(i))]
    assert not [p for p in learned if len(re.findall(r"\d", p)) > 1]


def test_byte_fallback_round_trips_arbitrary_unicode(sp):
    rng = random.Random(7)
    ranges = [(0x20, 0x7E), (0x00A0, 0x07FF), (0x4E00, 0x9FFF), (0x20000, 0x2A6DF), (0x1F300, 0x1FAFF),
              (0xE000, 0xF8FF), (0x0300, 0x036F), (0x10000, 0x10FFFF)]
    byte_tokens = 0
    for _ in range(300):
        chars = []
        for _ in range(rng.randint(1, 40)):
            lo, hi = rng.choice(ranges)
            chars.append(chr(rng.randint(lo, hi)))
        text = "".join(chars) + rng.choice(["", "\t", "  ", "\n"])
        ids = sp.encode(text)
        assert sp.decode(ids) == text
        assert sp.unk_id() not in ids
        byte_tokens += sum(sp.is_byte(i) for i in ids)
    assert byte_tokens > 0, "rare characters should fall back to UTF-8 byte pieces"
    for text in MIXED:
        assert sp.decode(sp.encode(text)) == text


def test_train_summary_and_sample(trained, shard_dirs):
    out, summary = trained
    assert {p.name for p in out.iterdir()} >= {"tokenizer.model", "tokenizer.vocab", "train_summary.json",
                                              "tokenizer_metadata.json", "train.log", "heldout"}
    assert read_json(out / "train_summary.json")["sha256"] == summary["sha256"]
    merged = [int(m) for m in re.findall(r"Merged: freq=(\d+)", (out / "train.log").read_text())]
    assert merged and summary["lowest_merge_frequency"] == min(merged) >= 1
    sample = summary["sample"]
    docs_in = {lang: pq.read_table(f"data/sample/{lang}.parquet").num_rows for lang in LANGS}
    heldout = read_table(out / "heldout")
    for lang in LANGS:  # mix=null takes every non-held-out document: the counts reconcile
        n_held = sum(1 for x in heldout.column("lang").to_pylist() if x == lang)
        assert sample["kept"][lang]["docs"] + n_held == docs_in[lang]
    from tokenizer_training.config import SampleConfig
    from tokenizer_training.sample import is_heldout
    assert all(is_heldout(SampleConfig(), i) for i in heldout.column("id").to_pylist())
    assert heldout.num_rows == sum(c["docs"] for c in sample["heldout"].values()) > 0


def test_sample_mix_and_seed(shard_dirs, tmp_path):
    from tokenizer_training.config import SampleConfig
    from tokenizer_training.sample import plan_keep_rates, survey, write_sample
    from tokenizer_training.sources import resolve_inputs, shard_files

    files = shard_files(resolve_inputs([f"{shard_dirs}/*"]), ["id", "text", "lang", "source"])

    def run(seed, name):
        cfg = SampleConfig(mix={"zh": 0.5, "en": 0.5}, seed=seed, holdout_fraction=0.0)
        stats = survey(files, cfg)
        stats.keep_rate = plan_keep_rates(stats, cfg)
        write_sample(files, cfg, stats, tmp_path / f"{name}.txt", tmp_path / f"{name}_heldout", 4096)
        return stats, (tmp_path / f"{name}.txt").read_bytes()

    stats, text = run(1, "a")
    _, again = run(1, "b")
    _, other = run(2, "c")
    assert text == again and text != other
    assert "code" not in stats.kept and set(stats.keep_rate) == {"zh", "en"}
    share_zh = stats.kept["zh"].bytes / stats.kept_bytes
    assert 0.4 < share_zh < 0.6, share_zh
    assert max(len(line) for line in text.split(b"\n")) <= 4096


def test_small_corpus_guard(shard_dirs, tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        main(["train", f"input=[{shard_dirs}/*]", f"out={tmp_path / 'big'}"])  # default: 125,696 pieces
    assert err.value.code == 2
    message = capsys.readouterr().err.strip().splitlines()
    assert len(message) == 1 and "corpus too small for vocab_size=125696" in message[0], message
    assert not (tmp_path / "big").exists()


def test_bad_inputs_are_named(shard_dirs, tmp_path, trained):
    from tokenizer_training.encode import encode

    write_table(tmp_path / "notext", pa.table({"id": ["a"], "lang": ["en"]}))
    with pytest.raises(UserError, match="field 'text'"):
        encode(trained[0] / "tokenizer.model", [str(tmp_path / "notext")], tmp_path / "o", EncodeConfig())
    (tmp_path / "incomplete").mkdir()
    with pytest.raises(UserError, match="incomplete"):
        encode(trained[0] / "tokenizer.model", [str(tmp_path / "incomplete")], tmp_path / "o2", EncodeConfig())
    with pytest.raises(UserError, match="no shard directory matches"):
        encode(trained[0] / "tokenizer.model", [str(tmp_path / "none*")], tmp_path / "o3", EncodeConfig())


def test_hf_tokenizer_matches_sentencepiece(hf_dir, sp, trained):
    from transformers import AutoTokenizer

    assert {p.name for p in hf_dir.iterdir()} == {"tokenizer.model", "tokenizer.json", "tokenizer_config.json",
                                                 "special_tokens_map.json"}
    tok = AutoTokenizer.from_pretrained(str(hf_dir))
    heldout = read_table(trained[0] / "heldout").column("text").to_pylist()
    for text in MIXED + CONTROL_STRINGS + heldout[:40]:
        ids = tok(text)["input_ids"]
        assert ids == sp.encode(text), text[:60]
        assert tok.decode(ids) == text
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (1, 2, 0)
    assert tok.convert_tokens_to_ids(["<reserved_106>", "<reserved_107>"]) == [195, 196]


def test_control_symbol_names_in_text_are_plain_text(hf_dir, sp):
    """"</s>" or "<reserved_106>" written in a document is text, piece by piece, for SentencePiece (as the
    training data was encoded), the exported HF tokenizer and `evaluate`'s tokenizer.json reader; only
    ids inserted as ids are control symbols."""
    from transformers import AutoTokenizer

    from tokenizer_training.evaluate import load_model

    tok, raw = AutoTokenizer.from_pretrained(str(hf_dir)), load_model(hf_dir)
    specials = set(range(3)) | {sp.piece_to_id(f"<reserved_{i}>") for i in (106, 107)}
    for text in CONTROL_STRINGS:
        ids = sp.encode(text)
        assert not specials & set(ids) and sp.decode(ids) == text, text
        assert tok(text)["input_ids"] == ids and raw.encode([text]) == [ids], text
    ids = tok("a")["input_ids"] + [tok.eos_token_id, tok.convert_tokens_to_ids("<reserved_106>")]
    assert ids[-2:] == [2, 195] and tok.decode(ids) == "a</s><reserved_106>"


def test_evaluate_report_side_by_side(trained, hf_dir, tmp_path):
    from tokenizer_training.evaluate import evaluate_command

    out = tmp_path / "report"
    model = str(trained[0] / "tokenizer.model")
    cfg = load_config([f"model_file={model}", f"out={out}", f"evaluate.compare=[{hf_dir / 'tokenizer.json'}]"])
    report = evaluate_command(cfg)
    assert (out / "eval_report.md").read_text().count("compression_rate") == 1
    assert read_json(out / "eval_report.json") == report
    ours, theirs = report["tokenizers"][model], report["tokenizers"][str(hf_dir / "tokenizer.json")]
    for lang, fig in ours["by_language"].items():
        assert fig["roundtrip_exact"] == 1.0 and fig["multi_digit_tokens"] == 0 and fig["unk_rate"] == 0
        assert fig["compression_rate"] == pytest.approx(fig["tokens"] * np.log2(8000) / (8 * fig["bytes"]))
        assert fig["tokens"] == theirs["by_language"][lang]["tokens"]  # the HF export tokenizes identically
        assert fig["newline_byte_rate"] == theirs["by_language"][lang]["newline_byte_rate"] > 0
    assert set(ours["by_language"]) == {"en", "zh", "code", "all"}
    assert ours["by_language"]["all"]["docs"] == sum(report["languages"].values())


def _input_docs(shard_dirs, key):
    docs = {}
    for lang in LANGS:
        table = read_table(shard_dirs / lang)
        for text, group in zip(table.column("text").to_pylist(), table.column(key).to_pylist()):
            docs.setdefault(group, []).append(text)
    return docs


def test_encode_reads_back_as_sentencepiece_ids(encoded, shard_dirs, sp, trained):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    out, summary = encoded
    docs = _input_docs(shard_dirs, "lang")
    assert set(summary["outputs"]) == set(docs) == {"en", "zh", "code"}
    assert summary["tokenizer"]["sha256"] == trained[1]["sha256"]
    assert (summary["tokenizer"]["vocab_size"], summary["tokenizer"]["eod_id"], summary["dtype"]) == (8000, 2, "uint16")
    for lang, texts in docs.items():
        ds = IndexedDataset(str(out / f"{lang}_text_document"))
        assert len(ds) == len(texts) == summary["outputs"][lang]["documents"]
        assert len(ds.document_indices) == len(texts) + 1  # one document per sequence
        want = [sp.encode(t) + [2] for t in texts]
        assert int(ds.sequence_lengths.sum()) == sum(map(len, want)) == summary["outputs"][lang]["tokens"]
        for i in range(len(ds)):
            assert ds[i].tolist() == want[i]
    assert not (out / "parts").exists()
    from megatron.core.tokenizers import MegatronTokenizer  # the trainer's view of the same model
    mt = MegatronTokenizer.from_pretrained(str(trained[0] / "tokenizer.model"))
    assert (mt.vocab_size, mt.eod) == (8000, 2) and mt.tokenize(MIXED[0]) == sp.encode(MIXED[0])


def test_encode_resumes_and_is_independent_of_workers(encoded, trained, shard_dirs, tmp_path):
    from tokenizer_training import encode as enc_mod
    from tokenizer_training.sources import resolve_inputs, shard_files

    cfg = EncodeConfig(group_by="lang", workers=1, chunk_mb=0.1)
    out = tmp_path / "resumed"
    model = trained[0] / "tokenizer.model"
    dirs = resolve_inputs([f"{shard_dirs}/*"])
    sp_model = spm.SentencePieceProcessor(model_file=str(model))
    # An interrupted run: the plan is written and the first 5 units are encoded, nothing merged.
    from stack_common.atomic import sha256_file
    enc_mod.prepare_out(out, enc_mod.plan_fingerprint(dirs, sha256_file(model), cfg), overwrite=False)
    units = enc_mod.plan_units(shard_files(dirs, ["text", "lang"]), int(cfg.chunk_mb * 1e6))
    dtype = enc_mod.DType.optimal_dtype(sp_model.get_piece_size())
    enc_mod.run_units(units[:5], model, cfg, dtype, out / "parts")
    (out / "parts" / ".stale.123.tmp").write_bytes(b"half-written")
    summary = enc_mod.encode(model, [f"{shard_dirs}/*"], out, cfg)
    assert summary["units_resumed"] == 5 and summary["units"] == len(units) > 5
    reference, ref_summary = encoded  # workers=2, other chunk size
    for lang in ref_summary["outputs"]:
        for ext in ("bin", "idx"):
            assert (out / f"{lang}_text_document.{ext}").read_bytes() == \
                   (reference / f"{lang}_text_document.{ext}").read_bytes()
    assert enc_mod.encode(model, [f"{shard_dirs}/*"], out, cfg) == summary  # complete: nothing redone
    with pytest.raises(UserError, match="other inputs, tokenizer or settings"):
        enc_mod.encode(model, [f"{shard_dirs}/*"], out, EncodeConfig(group_by="source", workers=1, chunk_mb=0.1))


def test_encode_by_source_and_megatron_blend(trained, shard_dirs, tmp_path):
    from megatron.core.datasets.indexed_dataset import IndexedDataset
    from tokenizer_training.encode import blend_from_summary

    out = tmp_path / "by_source"
    main(["encode", f"model_file={trained[0] / 'tokenizer.model'}", f"input=[{shard_dirs}/zh,{shard_dirs}/en]",
          f"out={out}", "encode.group_by=source", "encode.workers=1"])
    summary = read_json(out / "encode_summary.json")
    docs = {k: v for k, v in _input_docs(shard_dirs, "source").items() if k != "cpython-stdlib"}
    assert {k: o["documents"] for k, o in summary["outputs"].items()} == {k: len(v) for k, v in docs.items()}
    prefixes, weights = blend_from_summary(out)
    assert len(prefixes) == len(docs) and sum(weights) == summary["tokens"]
    assert all(len(IndexedDataset(p)) == summary["outputs"][p.rsplit("/", 1)[1][: -len("_text_document")]]["documents"]
               for p in prefixes)
    prefixes, weights = blend_from_summary(out, {"fortunes-zh": 0.3, "shakespeare": 0.7})
    assert weights == [0.3, 0.7] and prefixes[0].endswith("fortunes-zh_text_document")


def test_chunked_encoding_equals_sentencepiece(sp):
    from tokenizer_training.encode import encode_texts, newline_byte_id

    nl = newline_byte_id(sp)
    assert nl == sp.piece_to_id("<0x0A>")
    rng = random.Random(3)
    words = ["def", "  ", "\t", "数据", "12", "x", "😀", "\r", "", " ", "return", "。"]
    texts = MIXED + ["\n".join(" ".join(rng.choice(words) for _ in range(rng.randint(0, 400)))
                               for _ in range(rng.randint(1, 60))) for _ in range(40)]
    texts += ["\nlead", "trail\n", "\n\n", "a" * 5000 + "\n" + "b" * 3000]
    assert encode_texts(sp, texts, nl) == sp.encode(texts)


def test_training_is_reproducible(trained, shard_dirs, tmp_path):
    from tokenizer_training.train import train

    again = train(load_config(["tokenizer=small", f"input=[{shard_dirs}/*]", f"out={tmp_path / 'again'}"]))
    assert again["sha256"] == trained[1]["sha256"]
    assert again["sample"] == trained[1]["sample"]


# Baichuan 2's tokenizer.model trainer and normalizer settings (everything but the corpus-dependent sizes).
BAICHUAN2_TRAINER = {"model_type": 2, "split_digits": True, "byte_fallback": True,  # 2 = BPE
                     "allow_whitespace_only_pieces": True, "max_sentencepiece_length": 32,
                     "split_by_unicode_script": True, "split_by_whitespace": True, "max_sentence_length": 16384,
                     "unk_id": 0, "bos_id": 1, "eos_id": 2, "pad_id": -1}
BAICHUAN2_NORMALIZER = {"name": "identity", "add_dummy_prefix": False, "remove_extra_whitespaces": False}


def test_trained_model_proto_holds_the_baichuan2_settings(trained):
    """Read back from the trained tokenizer.model itself: what SentencePiece will apply at encode time."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString((trained[0] / "tokenizer.model").read_bytes())
    trainer, normalizer = proto.trainer_spec, proto.normalizer_spec
    assert {k: getattr(trainer, k) for k in BAICHUAN2_TRAINER} == BAICHUAN2_TRAINER
    assert {k: getattr(normalizer, k) for k in BAICHUAN2_NORMALIZER} == BAICHUAN2_NORMALIZER
    assert (trainer.vocab_size, round(trainer.character_coverage, 6), len(proto.pieces)) == (8000, 0.995, 8000)
    control = proto.SentencePiece.CONTROL
    pieces = [(p.piece, p.type) for p in proto.pieces]
    assert pieces[:4] == [("<unk>", proto.SentencePiece.UNKNOWN), ("<s>", control), ("</s>", control),
                          ("<unused_0>", control)]
    assert pieces[90] == ("<unused_87>", control) and pieces[91] == ("<reserved_2>", control)
    assert pieces[195:197] == [("<reserved_106>", control), ("<reserved_107>", control)]
    assert pieces[290] == ("<reserved_201>", control)
    assert pieces[291:547] == [(f"<0x{b:02X}>", proto.SentencePiece.BYTE) for b in range(256)]   # byte fallback


def test_full_size_config_is_the_baichuan2_one():
    """The default (full-size) tokenizer config gives the trainer Baichuan 2's options and sizes."""
    from tokenizer_training.train import trainer_options

    options = trainer_options(load_config([]).tokenizer, "text.txt", "tok")
    expect = {**BAICHUAN2_TRAINER, "model_type": "bpe", "vocab_size": 125_696, "character_coverage": 0.9999,
              "normalization_rule_name": "identity", "add_dummy_prefix": False, "remove_extra_whitespaces": False}
    assert {k: options[k] for k in expect} == expect
    assert len(options["control_symbols"]) == 288 and options["control_symbols"][192] == "<reserved_106>"
    small = load_config(["tokenizer=small"]).tokenizer
    assert (small.vocab_size, small.character_coverage) == (8000, 0.995)
