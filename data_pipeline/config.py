"""Typed configuration of `python -m data_pipeline` (validated from the Hydra YAML)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from stack_common.errors import ConfigError

PER_DOC_STAGES = ("normalize", "annotate", "clean_lines", "filter", "quality")
GLOBAL_STAGE_NAMES = ("exact_dedup", "minhash_dedup", "line_dedup", "semantic_dedup", "cluster_balance")  # also <stage>@<instance>
NEEDS_LANG = ("clean_lines", "filter", "quality")


@dataclass
class ReaderConfig:
    id_field: str = "id"
    text_field: str = "text"
    source_field: str = "source"
    lang_field: Optional[str] = None           # trusted only when `annotate` does not run
    metadata_fields: list[str] = field(default_factory=list)  # copied into annotations
    default_source: str = ""                   # empty: the input file's stem
    max_text_bytes: int = 16 * 1024 * 1024     # bigger records are quarantined, not processed
    batch_docs: int = 2000                     # documents per Arrow batch written


@dataclass
class NormalizeConfig:
    """Runs before the language is known, so nothing here may change code, tables or any script's
    spelling; every change is counted per reason in the stage's stats (`changes`, `chars_removed`)."""
    line_endings: bool = True          # \r\n and \r -> \n
    strip_control: bool = True         # C0/C1 control characters except \n and \t
    strip_invisible: bool = True       # U+200B zero width space, U+2060 word joiner, U+FEFF BOM (never ZWJ/ZWNJ)
    nfc: bool = True                   # Unicode NFC; folds CJK compatibility ideographs (counted apart)
    nfc_keep_cjk_compat: bool = False  # true: CJK compatibility ideographs (U+F900 block) kept as written
    collapse_spaces: bool = False      # true: runs of spaces between two words -> one space (prose-only corpora)
    max_blank_lines: int = 2           # longer runs of blank lines are shortened; -1: no limit
    keep_original: bool = False        # store the input text in annotations.original_text when changed


LANG_MODELS = ("cld2", "fasttext", "script")


@dataclass
class LangConfig:
    model: str = "cld2"                    # cld2 (pycld2, offline) | fasttext (needs fasttext_model) | script
    fasttext_model: Optional[str] = None   # a fastText LID file, e.g. lid.176.bin
    min_score: float = 0.5                 # a model verdict below this falls back to the script (zh/ja/ko) or `other`
    max_chars: int = 4000                  # characters of a document the model reads
    keep_langs: list[str] = field(default_factory=lambda: ["zh", "en", "code"])  # "*": keep every language
    zh_min_han_share: float = 0.3          # Han chars / (Han chars + Latin letters / 4): zh even if the model says en
    en_min_latin_ratio: float = 0.7        # Latin letters / letters (lang.model=script only)

    def __post_init__(self) -> None:
        problems = []
        if self.model not in LANG_MODELS:
            problems.append(f"lang.model: one of {', '.join(LANG_MODELS)}, got '{self.model}'")
        if self.model == "fasttext" and not self.fasttext_model:
            problems.append("lang.fasttext_model: lang.model=fasttext needs a model file, e.g. lid.176.bin")
        if self.fasttext_model and self.model != "fasttext":
            problems.append(f"lang.fasttext_model: set, but lang.model is '{self.model}' (add lang.model=fasttext)")
        if not self.keep_langs:
            problems.append("lang.keep_langs: name the languages to keep, or [\"*\"] for all")
        if problems:
            raise ConfigError(problems)


@dataclass
class ContentTypeConfig:
    """code / docs / prose (data_pipeline/content_type.py): which rule family judges a document."""
    code_min_line_ratio: float = 0.4     # lines that look like code / non-empty lines
    code_min_symbol_ratio: float = 0.01  # {}[]();=<> / non-space characters outside comments
    code_min_lines: int = 3              # shorter texts (quotes, titles) are never code
    docs_min_markup_lines: int = 2       # documentation markup lines needed to call a text docs
    docs_min_markup_ratio: float = 0.06  # markup lines / lines that make docs even of code-heavy text


@dataclass
class QualityConfig:
    model: Optional[str] = None            # fastText model from `task=quality_train`
    mode: str = "threshold"                # threshold | top_fraction | score_only
    threshold: float = 0.5
    top_fraction: dict[str, float] = field(default_factory=lambda: {"zh": 0.9, "en": 0.9})
    langs: list[str] = field(default_factory=lambda: ["zh", "en"])  # others get no score (-1) and pass
    max_chars: int = 4000                  # characters of a document the classifier sees


@dataclass
class QualityTrainConfig:
    positive: list[str] = field(default_factory=list)   # files, globs or shard dirs
    negative: list[str] = field(default_factory=list)
    output: str = "quality_model.bin"
    heldout_fraction: float = 0.2
    epoch: int = 10
    lr: float = 0.5
    dim: int = 16
    word_ngrams: int = 2
    bucket: int = 100_000                  # hash buckets: the model size is about (bucket + vocab) * dim * 4 bytes
    min_count: int = 1
    seed: int = 0
    max_chars: int = 4000


@dataclass
class PipelineConfig:
    task: str = "run"                      # run | quality_train
    input: list[str] = field(default_factory=list)
    output: str = ""
    stages: list[str] = field(default_factory=lambda: ["normalize", "annotate", "clean_lines", "filter"])
    workers: int = 1
    executor: str = "local"                # local | ray
    ray_address: Optional[str] = None
    overwrite: bool = False
    reader: ReaderConfig = field(default_factory=ReaderConfig)
    normalize: NormalizeConfig = field(default_factory=NormalizeConfig)
    lang: LangConfig = field(default_factory=LangConfig)
    content_type: ContentTypeConfig = field(default_factory=ContentTypeConfig)
    rules: dict[str, Any] = field(default_factory=dict)    # per language: configs/data/rules/<lang>.yaml
    quality: QualityConfig = field(default_factory=QualityConfig)
    quality_train: QualityTrainConfig = field(default_factory=QualityTrainConfig)
    dedup: dict[str, Any] = field(default_factory=dict)    # owned by data_pipeline/dedup
