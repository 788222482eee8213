"""Line-level cleaning: drop boilerplate lines (navigation, cookie and policy notices, share
buttons, C4's javascript lines), keep the rest of the document."""
from __future__ import annotations

import re
from collections import Counter


class LineCleaner:
    def __init__(self, cfg: dict):
        cfg = cfg or {}
        # One alternation with a named group per pattern: a single search per line names the match.
        patterns = (cfg.get("drop_patterns") or {}).items()
        self.pattern = re.compile("|".join(f"(?P<{name}>{rx})" for name, rx in patterns), re.IGNORECASE) if patterns else None
        self.max_word_chars = cfg.get("max_word_chars")
        self.drop_no_terminal_punct = tuple(cfg.get("terminal_punct") or ()) if cfg.get("drop_no_terminal_punct") else ()
        self.removed: Counter = Counter()

    def line_reason(self, line: str) -> str | None:
        stripped = line.strip()
        if not stripped:
            return None
        if self.pattern is not None and (match := self.pattern.search(stripped)):
            return match.lastgroup
        if self.max_word_chars and len(stripped) > self.max_word_chars and \
                any(len(w) > self.max_word_chars for w in stripped.split()):
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
