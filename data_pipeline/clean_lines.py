"""Line-level cleaning: drop boilerplate lines (navigation, cookie and policy notices, share
buttons, C4's javascript lines), keep the rest of the document."""
from __future__ import annotations

import re
from collections import Counter


class LineCleaner:
    def __init__(self, cfg: dict):
        cfg = cfg or {}
        flags = re.IGNORECASE | re.MULTILINE
        self.patterns = [(name, re.compile(rx, flags)) for name, rx in (cfg.get("drop_patterns") or {}).items()]
        self.max_word_chars = cfg.get("max_word_chars")
        self.long_word = re.compile(r"\S{%d,}" % (self.max_word_chars + 1)) if self.max_word_chars else None
        self.terminal_punct = tuple(cfg.get("terminal_punct") or ()) if cfg.get("drop_no_terminal_punct") else ()
        self.removed: Counter = Counter()

    def __call__(self, text: str) -> str:
        # Whole-document searches first (fast, in C): most documents have no line to drop.
        patterns = [(name, p) for name, p in self.patterns if p.search(text)]
        long_words = self.long_word is not None and self.long_word.search(text) is not None
        if not patterns and not long_words and not self.terminal_punct:
            return text
        kept = []
        for line in text.split("\n"):
            reason = self.line_reason(line.strip(), patterns, long_words)
            if reason is None:
                kept.append(line)
            else:
                self.removed[reason] += 1
        return "\n".join(kept).strip("\n")

    def line_reason(self, line: str, patterns: list, long_words: bool) -> str | None:
        if not line:
            return None
        for name, pattern in patterns:
            if pattern.search(line):
                return name
        if long_words and self.long_word.search(line):
            return "max_word_chars"
        if self.terminal_punct and not line.endswith(self.terminal_punct):
            return "no_terminal_punct"
        return None
