"""Text normalization that only does what its settings name: line endings, invisible junk, NFC,
runs of blank lines, newlines at the start and end of the document. It runs before the language
is known, so it never touches the whitespace inside a line (code alignment, TSV tabs, Markdown
hard breaks) unless `collapse_spaces` is asked for.

Every change is reported by reason, with the number of characters it removed; see
`Normalizer`."""
from __future__ import annotations

import re
import unicodedata
from typing import Callable

from .config import NormalizeConfig

# C0/C1 control characters except \t and \n (\r is the line-endings step's).
CONTROL_RE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
# Invisible characters with no job in running text: zero width space, word joiner, BOM / zero width
# no-break space. Not ZWNJ/ZWJ (U+200C/D: emoji sequences, Persian and Indic spelling), not
# variation selectors, not bidi marks.
INVISIBLE_RE = re.compile("[\u200b\u2060\ufeff]")
# CJK compatibility ideographs with a canonical (singleton) decomposition: NFC replaces them by the
# unified ideograph. U+FA0E, FA0F, FA11, FA13, FA14, FA1F, FA21, FA23, FA24, FA27-FA29 are unified
# ideographs despite the block name and are left alone by NFC.
CJK_COMPAT_RE = re.compile("[\uf900-\ufa0d\ufa10\ufa12\ufa15-\ufa1e\ufa20\ufa22\ufa25\ufa26\ufa2a-\ufaff"
                           "\U0002f800-\U0002fa1f]")
INNER_SPACES_RE = re.compile(r"(?<=\S) {2,}(?=\S)")


def fix_line_endings(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n") if "\r" in text else text


def nfc(text: str) -> str:
    return text if text.isascii() or unicodedata.is_normalized("NFC", text) else unicodedata.normalize("NFC", text)


def nfc_keeping_cjk_compat(text: str) -> str:
    """NFC everywhere except on CJK compatibility ideographs (safe: an ideograph composes with
    nothing, so the pieces between them normalize independently)."""
    if text.isascii() or unicodedata.is_normalized("NFC", text):
        return text
    pieces = CJK_COMPAT_RE.split(text)
    compat = CJK_COMPAT_RE.findall(text)
    out = [unicodedata.normalize("NFC", pieces[0])]
    for char, piece in zip(compat, pieces[1:]):
        out += [char, unicodedata.normalize("NFC", piece)]
    return "".join(out)


def fold_cjk_compat(text: str) -> str:
    """What NFC does to CJK compatibility ideographs, as its own counted step."""
    if text.isascii() or not CJK_COMPAT_RE.search(text):
        return text
    return CJK_COMPAT_RE.sub(lambda m: unicodedata.normalize("NFC", m.group()), text)


def blank_line_limiter(max_blank_lines: int) -> Callable[[str], str]:
    """Runs of more than `max_blank_lines` empty (or spaces/tabs only) lines are shortened to
    `max_blank_lines` empty lines."""
    run = re.compile(r"\n(?:[ \t]*\n){%d,}" % (max_blank_lines + 1))
    keep = "\n" * (max_blank_lines + 1)
    return lambda text: run.sub(keep, text) if "\n" in text else text


def trim_edge_newlines(text: str) -> str:
    return text.strip("\n")


def steps_for(cfg: NormalizeConfig) -> list[tuple[str, Callable[[str], str]]]:
    """(reason, function) in the order applied. Controls go before NFC so the output is NFC."""
    steps = []
    if cfg.line_endings:
        steps.append(("line_endings", fix_line_endings))
    if cfg.strip_control:
        steps.append(("control_chars", lambda t: CONTROL_RE.sub("", t)))
    if cfg.strip_invisible:
        steps.append(("invisible_chars", lambda t: INVISIBLE_RE.sub("", t)))
    if cfg.nfc and cfg.nfc_keep_cjk_compat:
        steps.append(("nfc", nfc_keeping_cjk_compat))
    elif cfg.nfc:
        steps += [("cjk_compat_ideographs", fold_cjk_compat), ("nfc", nfc)]
    if cfg.collapse_spaces:
        steps.append(("collapse_spaces", lambda t: INNER_SPACES_RE.sub(" ", t)))
    if cfg.max_blank_lines >= 0:
        steps.append(("blank_lines", blank_line_limiter(cfg.max_blank_lines)))
    steps.append(("edge_newlines", trim_edge_newlines))   # documents are joined with EOS, not newlines
    return steps


class Normalizer:
    def __init__(self, cfg: NormalizeConfig):
        self.steps = steps_for(cfg)

    def __call__(self, text: str) -> tuple[str, dict[str, int]]:
        """The normalized text and, for each reason that changed it, the characters it removed
        (0 for a change that keeps the length, e.g. a lone \\r or a compatibility ideograph)."""
        changes = {}
        for reason, step in self.steps:
            new = step(text)
            if new != text:
                changes[reason] = len(text) - len(new)
                text = new
        return text, changes


def normalize_text(text: str, cfg: NormalizeConfig) -> str:
    return Normalizer(cfg)(text)[0]
