"""Text normalization: line endings, Unicode NFC, control characters, whitespace runs."""
from __future__ import annotations

import re
import unicodedata

from .config import NormalizeConfig

# C0/C1 controls except \t and \n, plus zero-width characters and the BOM.
CONTROL_RE = re.compile("[\x00-\x08\x0b-\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200d\u2060\ufeff]")
INNER_SPACES_RE = re.compile(r"(?<=\S)[ \t]{2,}")   # leading indentation is kept (code, verse)
TRAILING_SPACES_RE = re.compile(r"[ \t]+$", re.MULTILINE)


def normalize_text(text: str, cfg: NormalizeConfig) -> str:
    if cfg.line_endings and "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if cfg.nfc and not text.isascii():
        text = unicodedata.normalize("NFC", text)
    if cfg.strip_control:
        text = CONTROL_RE.sub("", text)
    if cfg.collapse_spaces:
        text = TRAILING_SPACES_RE.sub("", INNER_SPACES_RE.sub(" ", text))
    if cfg.max_blank_lines >= 0:
        keep = "\n" * (cfg.max_blank_lines + 1)
        text = re.sub("\n{%d,}" % (cfg.max_blank_lines + 2), keep, text)
    return text.strip("\n")
