"""Line-level cleaning: drop boilerplate lines (navigation, cookie and policy notices, share
buttons, C4's javascript lines), keep the rest of the document."""
from __future__ import annotations

import re
from collections import Counter


class LineCleaner:
    def __init__(self, cfg: dict):
        cfg = cfg or {}
        self.patterns = [(name, re.compile(rx, re.IGNORECASE)) for name, rx in (cfg.get("drop_patterns") or {}).items()]
        self.max_word_chars = cfg.get("max_word_chars")
        self.drop_no_terminal_punct = tuple(cfg.get("terminal_punct") or ()) if cfg.get("drop_no_terminal_punct") else ()
        self.removed: Counter = Counter()

    def line_reason(self, line: str) -> str | None:
        stripped = line.strip()
        if not stripped:
            return None
        for name, pattern in self.patterns:
            if pattern.search(stripped):
                return name
        if self.max_word_chars and any(len(w) > self.max_word_chars for w in stripped.split()):
            return "max_word_chars"
        if self.drop_no_terminal_punct and not stripped.endswith(self.drop_no_terminal_punct):
            return "no_terminal_punct"
        return None

    def __call__(self, text: str) -> str:
        kept = []
        for line in text.split("\n"):
            reason = self.line_reason(line)
            if reason is None:
                kept.append(line)
            else:
                self.removed[reason] += 1
        return "\n".join(kept).strip("\n")
