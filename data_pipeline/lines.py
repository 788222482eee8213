"""Lines as the rules and the content-type detector read them: table rows are cells, and
hard-wrapped prose is joined back into the sentences it was cut from."""
from __future__ import annotations

import re

TABLE_ROW_RE = re.compile(r"^[\u2500-\u257f|+]")   # box drawing, | cell | rows, +---+ rulings
SENTENCE_END = (".", "!", "?", '"', "'", "”", "’", ")", ":", ";", "…")
WRAPPED_LINE_CHARS = 60   # a line this long that stops mid-sentence was wrapped at a fixed width


def logical_lines(text: str) -> list[str]:
    """Non-empty lines, with hard-wrapped prose (manuals, books and mail wrapped at 72-80 columns)
    joined back: a line that stops mid-sentence continues on the next line of its paragraph when
    that starts in lower case or the line is long. Line rules then judge sentences, not fragments
    ("see the man page for" repeated before each daemon's name is not a repeated line)."""
    joined: list[str] = []
    prev = ""            # the previous physical line of the same paragraph
    for raw in text.split("\n"):
        line = raw.strip()
        if line and prev and not prev.endswith(SENTENCE_END) and not TABLE_ROW_RE.match(line) and (
                line[0].islower() or len(prev) >= WRAPPED_LINE_CHARS):
            joined[-1] = f"{joined[-1]} {line}"
        elif line:
            joined.append(line)
        prev = line
    return joined
