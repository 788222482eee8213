"""Language annotation: a language-ID model names natural languages; code is a content type.

The model labels a document with its language's ISO 639 code (en, zh, fr, ja, ...). The default is
CLD2 through pycld2, whose tables are compiled into the extension module: nothing is downloaded and
it runs offline. `lang.model=fasttext` uses a fastText LID file instead (lid.176.bin / .ftz), and
`lang.model=script` the script statistics alone (zh / ja / ko / en / other).

A document whose content type is code (data_pipeline/content_type.py: line- and symbol-based) gets
the language `code`. Script statistics stand in where the model has nothing to go on: no letters,
or a verdict below `lang.min_score`. In that case they only
name languages that their script identifies (zh, ja, ko); Latin text without a confident verdict is
`other`, never assumed to be English.
"""
from __future__ import annotations

import re
from functools import lru_cache
from importlib.metadata import version


from stack_common.atomic import sha256_file
from stack_common.errors import UserError

from .char_classes import CLD2_REFUSED, HAN, HANGUL, KANA, LATIN, LETTER, REFUSED, class_counts, code_point_classes
from .config import ContentTypeConfig, LangConfig
from .content_type import detect_content_type

# A script share above this names the language by itself (kana: ja, hangul: ko).
SCRIPT_SHARE = 0.05
# Languages script statistics can name without a model (Latin script could be any of dozens).
NAMED_BY_SCRIPT = ("zh", "ja", "ko")

# Model labels that mean no language, and labels folded into the language whose rules apply.
# Cantonese and Wu written in Han characters get the Chinese rules; the model's own label stays
# in the annotations (lang_label) for anyone who wants them apart.
UNKNOWN_LABELS = {"", "un", "xx", "und", "zxx"}
SAME_AS = {"yue": "zh", "wuu": "zh", "iw": "he", "in": "id", "ji": "yi", "jw": "jv", "mo": "ro"}
def script_stats(text: str) -> dict:
    count = class_counts(text)
    letters, han, latin = count[LETTER], count[HAN], count[LATIN]
    return {
        "letters": letters,
        # A Han character carries about as much as four Latin letters (one short word).
        "han_share": han / ((han + latin / 4) or 1),
        "latin_ratio": latin / (letters or 1),
        "kana_ratio": count[KANA] / (letters or 1),
        "hangul_ratio": count[HANGUL] / (letters or 1),
    }


def language_from_scripts(stats: dict, cfg: LangConfig) -> str:
    """ja / ko / zh / en / other from script statistics alone (`lang.model=script`)."""
    if stats["kana_ratio"] > SCRIPT_SHARE:
        return "ja"
    if stats["hangul_ratio"] > SCRIPT_SHARE:
        return "ko"
    if stats["han_share"] >= cfg.zh_min_han_share:
        return "zh"
    if stats["latin_ratio"] >= cfg.en_min_latin_ratio:
        return "en"
    return "other"


def canonical_language(label: str) -> str:
    """A model's label as the pipeline's language code ('' when the model names none)."""
    code = label.removeprefix("__label__").replace("_", "-").split("-")[0].lower()
    if code in UNKNOWN_LABELS:
        return ""
    return SAME_AS.get(code, code)


class Cld2Detector:
    """CLD2 (pycld2): the share of the text's bytes in its top language is the score."""
    name = "cld2"

    def __init__(self, max_chars: int):
        try:
            import pycld2
        except ImportError:
            raise UserError("lang.model=cld2 needs the pycld2 package, which is not installed", field="lang.model",
                            expected="pip install 'pycld2>=0.42', or lang.model=script") from None
        self.detect_cld2 = pycld2.detect
        self.max_chars = max_chars

    def __call__(self, text: str) -> tuple[str, float]:
        sample = text[:self.max_chars]
        if (code_point_classes(sample) & REFUSED).any():
            sample = CLD2_REFUSED.sub(" ", sample)
        _, _, top = self.detect_cld2(sample)
        _, code, percent, _ = top[0]
        return code, percent / 100


@lru_cache(maxsize=1)
def cld2_identity() -> dict:
    """The package and the hash of the extension module its tables are compiled into."""
    import pycld2._pycld2 as ext

    return {"model": "cld2", "package": f"pycld2=={version('pycld2')}", "file": ext.__file__,
            "sha256": sha256_file(ext.__file__)}


class FastTextDetector:
    """A fastText language-ID model file (e.g. lid.176.bin): the top label's probability is the score."""
    name = "fasttext"

    def __init__(self, path: str, max_chars: int):
        self.model = load_fasttext(path)
        self.max_chars = max_chars

    def __call__(self, text: str) -> tuple[str, float]:
        labels, scores = self.model.predict(" ".join(text[:self.max_chars].split()), k=1)
        return (labels[0] if labels else ""), (float(scores[0]) if len(scores) else 0.0)


@lru_cache(maxsize=2)
def load_fasttext(path: str):
    import fasttext

    fasttext.FastText.eprint = lambda *args, **kwargs: None  # silence the load warning
    return fasttext.load_model(path)


@lru_cache(maxsize=2)
def fasttext_sha256(path: str) -> str:
    return sha256_file(path)


def lang_model_identity(cfg: LangConfig) -> dict | None:
    """What labels the languages: model, package, file and its sha256 (None for model=script)."""
    if cfg.model == "cld2":
        return cld2_identity()
    if cfg.model == "fasttext":
        return {"model": "fasttext", "package": f"fasttext-numpy2=={version('fasttext-numpy2')}",
                "file": cfg.fasttext_model, "sha256": fasttext_sha256(cfg.fasttext_model)}
    return None


def build_detector(cfg: LangConfig) -> Cld2Detector | FastTextDetector | None:
    if cfg.model == "cld2":
        return Cld2Detector(cfg.max_chars)
    if cfg.model == "fasttext":
        return FastTextDetector(cfg.fasttext_model, cfg.max_chars)
    return None


def decide_language(label: str, score: float, stats: dict, by_script: str, cfg: LangConfig) -> str:
    lang = canonical_language(label)
    confident = bool(lang) and score >= cfg.min_score
    if confident and lang in ("zh", "ja", "ko"):
        return lang
    if stats["han_share"] >= cfg.zh_min_han_share and stats["kana_ratio"] <= SCRIPT_SHARE:
        # Chinese prose around Latin commands, options and names (manuals, help pages): the model
        # weighs the Latin runs as English, but the Han text is what a reader reads.
        return "zh"
    if not confident:
        return by_script if by_script in NAMED_BY_SCRIPT else "other"
    return lang


def annotate_language(text: str, cfg: LangConfig, detector=None,
                      content_cfg: ContentTypeConfig | None = None) -> tuple[str, dict]:
    """The document's language (`code` for code) and the facts it was decided on, its content type
    among them (kept in annotations)."""
    content_type, _ = detect_content_type(text, content_cfg or ContentTypeConfig())
    if content_type == "code":
        return "code", {"content_type": content_type, "lang_by": "content_type"}
    stats = script_stats(text)
    by_script = language_from_scripts(stats, cfg)
    facts = {"content_type": content_type, "han_share": round(stats["han_share"], 4), "lang_by": "script"}
    if detector is None or not stats["letters"]:
        return by_script, facts
    label, score = detector(text)
    facts.update(lang_by=detector.name, lang_label=label, lang_score=round(score, 4))
    return decide_language(label, score, stats, by_script, cfg), facts


def kept(lang: str, cfg: LangConfig) -> bool:
    return "*" in cfg.keep_langs or lang in cfg.keep_langs
