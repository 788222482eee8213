"""Line-level cleaning: drop boilerplate lines (navigation, cookie and policy notices, share
buttons, C4's javascript lines) and lines carrying a garbage token (base64 blobs and the like),
keep the rest of the document. Lines inside Markdown code fences are code, not boilerplate: only
the garbage-token rule applies to them."""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Optional

from stack_common.config import to_dataclass

# Scripts written without spaces between words (Han, kana, Hangul, Thai, Lao, Tibetan, Myanmar,
# Khmer) and CJK punctuation / fullwidth forms. A "word" for the long-word rule never contains them,
# so a long Chinese or Japanese line is judged by its characters, like any prose, while a base64 blob
# or a run of Latin garbage inside it still counts.
NO_SPACE_SCRIPTS = ("\u0e00-\u0fff\u1000-\u109f\u1100-\u11ff\u1780-\u17ff\u2e80-\u9fff\ua960-\ua97f"
                    "\uac00-\ud7ff\uf900-\ufaff\ufe30-\ufe4f\uff00-\uffef\U0001b000-\U0001b16f"
                    "\U00020000-\U0003ffff")
FENCE_RE = re.compile(r"^ {0,3}(`{3,}|~{3,})")


@dataclass
class CleanLinesConfig:
    drop_patterns: dict[str, str] = field(default_factory=dict)   # reason -> regex (case-insensitive)
    max_word_chars: Optional[int] = None      # C4: a line with a longer "word" is removed
    drop_no_terminal_punct: bool = False      # C4: keep only lines ending in terminal punctuation
    terminal_punct: list[str] = field(default_factory=list)


def long_word_pattern(max_chars: int) -> re.Pattern:
    return re.compile(r"[^\s%s]{%d,}" % (NO_SPACE_SCRIPTS, max_chars + 1))


class LineCleaner:
    def __init__(self, cfg: dict | None, where: str = "clean_lines"):
        cfg = to_dataclass(cfg or {}, CleanLinesConfig, where)
        flags = re.IGNORECASE | re.MULTILINE
        self.patterns = [(name, re.compile(rx, flags)) for name, rx in cfg.drop_patterns.items()]
        self.long_word = long_word_pattern(cfg.max_word_chars) if cfg.max_word_chars else None
        # any run it finds is also a run of non-space characters; this plain search is 2x faster
        self.long_run = re.compile(r"\S{%d,}" % (cfg.max_word_chars + 1)) if cfg.max_word_chars else None
        self.terminal_punct = tuple(cfg.terminal_punct) if cfg.drop_no_terminal_punct else ()
        self.removed: Counter = Counter()

    def __call__(self, text: str) -> str:
        text, removed = self.clean(text)
        for reason, (lines, _chars) in removed.items():
            self.removed[reason] += lines
        return text

    def clean(self, text: str) -> tuple[str, dict[str, tuple[int, int]]]:
        """The cleaned text and, per reason, (lines removed, characters removed with their newlines)."""
        # Whole-document searches first (fast, in C): most documents have no line to drop.
        patterns = [(name, p) for name, p in self.patterns if p.search(text)]
        long_words = self.long_run is not None and self.long_run.search(text) is not None \
            and self.long_word.search(text) is not None
        if not patterns and not long_words and not self.terminal_punct:
            return text, {}
        kept, removed = [], {}
        fence = None
        for line in text.split("\n"):
            stripped = line.strip()
            fence, in_code = fence_state(fence, line)
            reason = self.line_reason(stripped, [] if in_code else patterns, long_words, in_code)
            if reason is None:
                kept.append(line)
            else:
                lines, chars = removed.get(reason, (0, 0))
                removed[reason] = (lines + 1, chars + len(line) + 1)
        if not removed:
            return text, {}
        return "\n".join(kept).strip("\n"), removed

    def line_reason(self, line: str, patterns: list, long_words: bool, in_code: bool) -> str | None:
        if not line:
            return None
        for name, pattern in patterns:
            if pattern.search(line):
                return name
        if long_words and self.long_word.search(line):
            return "max_word_chars"
        if self.terminal_punct and not in_code and not line.endswith(self.terminal_punct):
            return "no_terminal_punct"
        return None


def fence_state(fence: str | None, line: str) -> tuple[str | None, bool]:
    """Markdown fenced code blocks: (the open fence after this line, whether this line is code).
    The fence lines themselves count as code (```javascript is not a javascript notice)."""
    match = FENCE_RE.match(line)
    if fence is None:
        return (match.group(1), True) if match else (None, False)
    closes = match is not None and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence) \
        and not line.strip().lstrip(fence[0])
    return (None if closes else fence), True
