"""Baichuan-2-style SentencePiece BPE tokenizer: train on Arrow shards, evaluate, export to
Hugging Face, and encode shards into megatron-core indexed datasets.

CLI: python -m tokenizer_training {train,evaluate,export-hf,encode} [Hydra overrides]
Python API (imports are lazy: megatron-core and transformers load only when used):
    tokenizer_training.export_hf.export_hf_tokenizer(model_path, out_dir, overwrite=False)
    tokenizer_training.encode.encode(model_path, inputs, out, EncodeConfig(...))
    tokenizer_training.encode.blend_from_summary(encode_dir, weights=None) -> (prefixes, weights)
"""


def export_hf_tokenizer(model_path, out_dir, overwrite: bool = False):
    """See tokenizer_training.export_hf.export_hf_tokenizer."""
    from .export_hf import export_hf_tokenizer as export

    return export(model_path, out_dir, overwrite=overwrite)
