"""`export-hf`: a Hugging Face tokenizer directory that gives the same ids as SentencePiece.

    from tokenizer_training.export_hf import export_hf_tokenizer
    export_hf_tokenizer("tok/tokenizer.model", "hf_tok")   # AutoTokenizer.from_pretrained("hf_tok")

Writes tokenizer.model, tokenizer.json, tokenizer_config.json, special_tokens_map.json. The
tokenizer adds no BOS/EOS and no prefix space (transformers 5 would otherwise prepend "▁"),
matching `SentencePieceProcessor.encode`; the export is checked against SentencePiece before
it is published.

Control-symbol strings in raw text (`</s>`, `<s>`, `<unk>`, `<reserved_106>`, ...) are plain
text: SentencePiece encodes them piece by piece (`<`, `/`, `s`, `>`), and that is how the
training data was encoded, so a document quoting "</s>" never ended a document in training.
The HF tokenizer does the same (`split_special_tokens: true`), so evaluation sees the ids
training saw. Special ids are inserted as ids (`tokenizer.eos_token_id`,
`convert_tokens_to_ids("<reserved_106>")`), never by writing their names into the text.
tokenizer.json has no field for this: read alone with the `tokenizers` library it matches the
names as special tokens unless `tokenizer.encode_special_tokens = True` is set (as `evaluate` does).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import sentencepiece as spm

from stack_common.atomic import atomic_dir, atomic_write_json, read_json
from stack_common.errors import UserError
from stack_common.logging import get_logger

log = get_logger("tokenizer_training.export_hf")

# Mixed text that exercises what usually breaks parity: digits, tabs, runs of spaces, leading
# spaces, newlines, emoji, rare CJK (byte fallback) and code.
PARITY_PROBE = ("  Baichuan 2 在2023年9月发布，词表125696个。\tTabs\t\tand    spaces\n"
                "def f(x):\n        return x ** 2  # 平方 😀🚀 𠀀𪚥 龘 ﬁ Ａ１\n\n"
                "<s>a</s> <unk> x<reserved_106>y <reserved_107> <unused_3>\n")


def read_pad_id(model_path: Path) -> int:
    """pad id from the train summary next to the model (Baichuan 2 pads with <unk>, id 0)."""
    summary = model_path.parent / "train_summary.json"
    return int(read_json(summary).get("pad_id", 0)) if summary.is_file() else 0


def load_sentencepiece(model_path: str | Path) -> spm.SentencePieceProcessor:
    path = Path(model_path)
    if not path.is_file():
        raise UserError("tokenizer model not found", file=path, expected="a SentencePiece tokenizer.model")
    try:
        return spm.SentencePieceProcessor(model_file=str(path))
    except (RuntimeError, OSError) as err:
        raise UserError(f"not a SentencePiece model ({str(err).splitlines()[0]})", file=path) from None


def build_hf_tokenizer(directory: Path, pad_token: str):
    """transformers converts `directory`/tokenizer.model into a tokenizers-backed Llama tokenizer."""
    from transformers import LlamaTokenizer

    return LlamaTokenizer.from_pretrained(str(directory), add_prefix_space=False, legacy=False,
                                          add_bos_token=False, add_eos_token=False, pad_token=pad_token)


def check_parity(sp: spm.SentencePieceProcessor, hf_dir: Path, texts: list[str]) -> None:
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(hf_dir))
    for text in texts:
        want, got = sp.encode(text), hf(text)["input_ids"]
        if want != got:
            raise RuntimeError(f"HF export disagrees with SentencePiece on {text[:40]!r}: {got[:12]} vs {want[:12]}")
        if hf.decode(got) != sp.decode(want):
            raise RuntimeError(f"HF export decodes {text[:40]!r} differently from SentencePiece")


def export_hf_tokenizer(model_path: str | Path, out_dir: str | Path, overwrite: bool = False,
                        model_max_length: int | None = None) -> Path:
    """Export the SentencePiece model at `model_path` as a Hugging Face tokenizer directory `out_dir`
    (`model_max_length`: the model's sequence length, when the tokenizer goes with a model)."""
    model_path = Path(model_path)
    sp = load_sentencepiece(model_path)
    if Path(out_dir).exists() and not overwrite:
        raise UserError("output directory already exists (pass overwrite=true to replace it)", file=out_dir)
    specials = {"bos_token": sp.id_to_piece(sp.bos_id()), "eos_token": sp.id_to_piece(sp.eos_id()),
                "unk_token": sp.id_to_piece(sp.unk_id()), "pad_token": sp.id_to_piece(read_pad_id(model_path))}
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        shutil.copyfile(model_path, tmp / "tokenizer.model")
        tokenizer = build_hf_tokenizer(tmp, specials["pad_token"])
        tokenizer.save_pretrained(str(tmp))
        config = read_json(tmp / "tokenizer_config.json")
        config.update(add_bos_token=False, add_eos_token=False, add_prefix_space=False, legacy=False,
                      tokenizer_class="LlamaTokenizer", split_special_tokens=True, **specials)
        if model_max_length is not None:
            config["model_max_length"] = int(model_max_length)
        atomic_write_json(tmp / "tokenizer_config.json", config)
        atomic_write_json(tmp / "special_tokens_map.json", specials)
        check_parity(sp, tmp, [PARITY_PROBE])
    log.info("exported %s to %s (%d pieces)", model_path, out_dir, sp.get_piece_size())
    return Path(out_dir)


def export_command(cfg) -> None:
    if cfg.model_file is None or cfg.out is None:
        raise UserError("export-hf needs model_file=PATH/tokenizer.model and out=DIR")
    export_hf_tokenizer(cfg.model_file, cfg.out, overwrite=cfg.overwrite)
