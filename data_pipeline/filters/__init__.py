"""Heuristic filters: per-language rule sets built from `configs/data/rules/<lang>.yaml`.

A rule set is an ordered list of small rules; the first one that fails names the reason.
"""
from __future__ import annotations

from typing import Callable

from stack_common.errors import ConfigError

from . import chinese, english, generic

# Which rules (and which view of the text) each language's YAML may use.
RULE_FAMILIES = {
    "en": (english.EnglishText, {**generic.RULES, **english.RULES}),
    "zh": (chinese.ChineseText, chinese.RULES),
    "code": (generic.PlainText, generic.RULES),
    "other": (generic.PlainText, generic.RULES),
}


class RuleSet:
    def __init__(self, lang: str, rules: dict):
        view, known = RULE_FAMILIES[lang]
        unknown = [name for name in rules if name not in known]
        if unknown:
            raise ConfigError([f"rules.{lang}.filter.{name}: unknown rule (known: {', '.join(known)})" for name in unknown])
        self.view = view
        self.rules: list[tuple[Callable, dict]] = [(known[name], params) for name, params in rules.items() if params]

    def __call__(self, text: str) -> str | None:
        doc = self.view(text)
        for rule, params in self.rules:
            reason = rule(doc, params)
            if reason is not None:
                return reason
        return None


def build_rule_sets(rules_cfg: dict) -> dict[str, RuleSet]:
    return {lang: RuleSet(lang, (rules_cfg.get(lang) or {}).get("filter") or {}) for lang in RULE_FAMILIES}
