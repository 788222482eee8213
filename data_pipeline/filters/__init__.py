"""Heuristic filters: per-language rule sets built from `configs/data/rules/<lang>.yaml`.

A rule set is an ordered list of small rules; the first one that fails names the reason.
"""
from __future__ import annotations

from dataclasses import asdict
from typing import Callable

from omegaconf import DictConfig

from stack_common.config import to_dataclass
from stack_common.errors import ConfigError

from ..clean_lines import LineCleaner
from . import chinese, english, generic

# Which rules (and which view of the text) each language's YAML may use.
RULE_FAMILIES = {
    "en": (english.EnglishText, {**generic.RULES, **english.RULES}),
    "zh": (chinese.ChineseText, chinese.RULES),
    "code": (generic.PlainText, generic.RULES),
    "docs": (generic.PlainText, generic.RULES),
    "other": (generic.PlainText, generic.RULES),
}


class RuleSet:
    def __init__(self, lang: str, rules: dict):
        view, known = RULE_FAMILIES[lang]
        unknown = [name for name in rules if name not in known]
        if unknown:
            raise ConfigError([f"rules.{lang}.filter.{name}: unknown rule (known: {', '.join(known)})" for name in unknown])
        self.view = view
        self.rules: list[tuple[Callable, dict]] = [
            (known[name][0], typed_params(known[name][1], params, f"rules.{lang}.filter.{name}"))
            for name, params in rules.items() if params]

    def __call__(self, text: str) -> str | None:
        doc = self.view(text)
        for rule, params in self.rules:
            reason = rule(doc, params)
            if reason is not None:
                return reason
        return None


def typed_params(params_cls: type, params: dict, where: str) -> dict:
    """A rule's thresholds checked against its dataclass: a misspelt key or a wrong type is an error
    (not a silently disabled check). Returned as a dict, with None for every unset threshold."""
    if not isinstance(params, (dict, DictConfig)):
        raise ConfigError([f"{where}: expected a mapping of thresholds, got {params!r}"])
    try:
        return asdict(to_dataclass(params, params_cls, where))
    except ValueError as err:   # a dataclass's own check (__post_init__)
        raise ConfigError([f"{where}.{err}"]) from None


RULE_SECTIONS = ("clean_lines", "filter")


def check_rules(rules_cfg: dict) -> None:
    """Fail at start-up, not in a worker: unknown languages or sections, then every rule's thresholds."""
    problems = [f"rules.{lang}: no rule family for this language (known: {', '.join(RULE_FAMILIES)})"
                for lang in rules_cfg if lang not in RULE_FAMILIES]
    for lang, sections in rules_cfg.items():
        problems += [f"rules.{lang}.{name}: unknown section (known: {', '.join(RULE_SECTIONS)})"
                     for name in (sections or {}) if name not in RULE_SECTIONS]
    if problems:
        raise ConfigError(problems)
    for lang, sections in rules_cfg.items():
        LineCleaner((sections or {}).get("clean_lines"), f"rules.{lang}.clean_lines")
    build_rule_sets(rules_cfg)


def rule_family(lang: str, content_type: str | None = None) -> str:
    """The rule set a document is judged by: `docs` for documentation and markup, else its
    language's own (`code` for code), else `other` (fr, de, ja, ...)."""
    if content_type == "docs" and lang != "code":
        return "docs"
    return lang if lang in RULE_FAMILIES else "other"


def build_rule_sets(rules_cfg: dict) -> dict[str, RuleSet]:
    return {lang: RuleSet(lang, (rules_cfg.get(lang) or {}).get("filter") or {}) for lang in RULE_FAMILIES}
