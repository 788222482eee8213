"""Typed configuration of `python -m data_pipeline` (validated from the Hydra YAML)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from stack_common.errors import ConfigError
from stack_common.shards import ShardCompression
from stack_common.tasks import RayConfig

PER_DOC_STAGES = ("normalize", "annotate", "clean_lines", "filter", "harmful", "pii", "decontaminate", "quality")
GLOBAL_STAGE_NAMES = ("exact_dedup", "minhash_dedup", "line_dedup", "semantic_dedup", "cluster_balance")  # also <stage>@<instance>
NEEDS_LANG = ("clean_lines", "filter", "harmful", "quality")


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
    unit_mb: float = 256                       # input files cut into work units of about this size; 0: one unit a file


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


TRAIN_NEGATIVES = ("rejects", "raw_sample", "both")


@dataclass
class QualityTrainConfig:
    positive: list[str] = field(default_factory=list)   # files, globs or shard dirs
    negative: list[str] = field(default_factory=list)   # heuristic rejects, e.g. OUT/stages/*_filter/excluded
    raw_sample: list[str] = field(default_factory=list)  # raw input: a random sample of it as negatives
    raw_sample_docs: int = 5000            # documents drawn from raw_sample (uniform, seeded)
    train_negatives: str = "rejects"       # rejects | raw_sample | both: what the model trains on
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

    def __post_init__(self) -> None:
        if self.train_negatives not in TRAIN_NEGATIVES:
            raise ConfigError([f"train_negatives: one of {', '.join(TRAIN_NEGATIVES)}, got '{self.train_negatives}'"])
        if self.raw_sample_docs < 1:
            raise ConfigError([f"raw_sample_docs: must be >= 1, got {self.raw_sample_docs}"])


@dataclass
class HarmfulConfig:
    """Word and domain lists per category (files of one entry a line, `#` comments; relative paths
    are looked up from the working directory, then from configs/), and an optional fastText model."""
    word_lists: dict[str, list[str]] = field(default_factory=dict)   # category -> files of terms (zh and en)
    url_lists: dict[str, list[str]] = field(default_factory=dict)    # category -> files of domains
    min_terms: int = 2                     # distinct list terms (or linked listed domains) of one category
    url_field: Optional[str] = None        # annotation holding the document's own URL (reader.metadata_fields)
    model: Optional[str] = None            # fastText model from `task=harmful_train`
    threshold: float = 0.5                 # P(harmful) at or above which the model removes a document
    langs: list[str] = field(default_factory=lambda: ["zh", "en"])  # languages the model judges
    max_chars: int = 4000

    def __post_init__(self) -> None:
        problems = []
        if self.min_terms < 1:
            problems.append(f"harmful.min_terms: must be >= 1, got {self.min_terms}")
        if not 0.0 <= self.threshold <= 1.0:
            problems.append(f"harmful.threshold: in [0, 1], got {self.threshold}")
        if problems:
            raise ConfigError(problems)


PII_KINDS = ("email", "phone", "id_cn", "ip", "card")


@dataclass
class PiiConfig:
    kinds: list[str] = field(default_factory=lambda: list(PII_KINDS))  # what is replaced
    keep_private_ip: bool = True           # loopback, private, link-local and documentation addresses stay

    def __post_init__(self) -> None:
        unknown = [k for k in self.kinds if k not in PII_KINDS]
        if unknown:
            raise ConfigError([f"pii.kinds: unknown {unknown} (known: {', '.join(PII_KINDS)})"])


@dataclass
class DecontaminateConfig:
    eval_sets: dict[str, list[str]] = field(default_factory=dict)   # benchmark -> JSONL / Parquet files
    fields: Optional[list[str]] = None     # text fields of an eval item; None: prompt, question, answer, choices
    ngram: int = 13                        # tokens: a word (Latin, digits) or one CJK character
    min_ngram: int = 8                     # a shorter field of at least this many tokens is matched whole
    action: str = "remove"                 # remove | mark (annotations.contamination)

    def __post_init__(self) -> None:
        problems = []
        if self.action not in ("remove", "mark"):
            problems.append(f"decontaminate.action: remove | mark, got '{self.action}'")
        if self.ngram < 1:
            problems.append(f"decontaminate.ngram: must be >= 1, got {self.ngram}")
        if not 1 <= self.min_ngram <= self.ngram:
            problems.append(f"decontaminate.min_ngram: in [1, ngram], got {self.min_ngram}")
        if self.fields is not None and not self.fields:
            problems.append("decontaminate.fields: name the text fields of an eval item, e.g. [question, answer]")
        if problems:
            raise ConfigError(problems)


@dataclass
class PipelineConfig:
    task: str = "run"                      # run | quality_train | harmful_train
    input: list[str] = field(default_factory=list)
    output: str = ""
    stages: list[str] = field(default_factory=lambda: ["normalize", "annotate", "clean_lines", "filter"])
    workers: int = 1
    executor: str = "local"                # local | ray
    ray_address: Optional[str] = None
    ray: RayConfig = field(default_factory=RayConfig)
    overwrite: bool = False
    keep_stage_outputs: bool = True        # false: a segment's kept/ is removed once the next one commits; not decisive
    shards: ShardCompression = field(default_factory=ShardCompression)   # document shards' codec: not decisive
    reader: ReaderConfig = field(default_factory=ReaderConfig)
    normalize: NormalizeConfig = field(default_factory=NormalizeConfig)
    lang: LangConfig = field(default_factory=LangConfig)
    content_type: ContentTypeConfig = field(default_factory=ContentTypeConfig)
    rules: dict[str, Any] = field(default_factory=dict)    # per language: configs/data/rules/<lang>.yaml
    quality: QualityConfig = field(default_factory=QualityConfig)
    quality_train: QualityTrainConfig = field(default_factory=QualityTrainConfig)
    harmful: HarmfulConfig = field(default_factory=HarmfulConfig)
    harmful_train: QualityTrainConfig = field(default_factory=lambda: QualityTrainConfig(output="harmful_model.bin"))
    pii: PiiConfig = field(default_factory=PiiConfig)
    decontaminate: DecontaminateConfig = field(default_factory=DecontaminateConfig)
    dedup: dict[str, Any] = field(default_factory=dict)    # owned by data_pipeline/dedup
