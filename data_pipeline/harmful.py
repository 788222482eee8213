"""Harmful-content detection: word and domain lists per category, and a fastText classifier.

Terms are matched with one Aho-Corasick automaton (pyahocorasick) on the matching form of the
text (NFKC, so full-width ＰＯＲＮ is porn; lower case; whitespace runs one space), so Chinese
needs no word segmentation. Simplified and Traditional Chinese are different characters: a list
needs both (the starter lists have both). A term that starts or ends with a Latin letter or digit only
counts at a word boundary there ("ass" is not hit inside "class"); a trailing `*` makes it a
prefix ("porn*" hits "pornography"). Domains match a URL's host or any parent domain of it.
A document is removed when one category has `min_terms` distinct terms or linked domains, when
its own URL is listed, or when the model's P(harmful) reaches the threshold.
"""
from __future__ import annotations

import re
import unicodedata
from collections import defaultdict
from pathlib import Path
from urllib.parse import urlsplit

from stack_common.config import config_dir
from stack_common.errors import UserError

from .config import HarmfulConfig

HARMFUL, SAFE = "__label__harmful", "__label__safe"
URL_HOST_RE = re.compile(r"(?:https?://|\bwww\.)([A-Za-z0-9.-]+\.[A-Za-z]{2,})", re.I)
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://|//")


def matching_form(text: str) -> str:
    """What terms are matched on: NFKC (width), lower case, whitespace runs one space."""
    if not unicodedata.is_normalized("NFKC", text):
        text = unicodedata.normalize("NFKC", text)
    return " ".join(text.lower().split())


def list_path(path: str) -> Path:
    """A list file named in the config: as given (absolute or from the working directory), else
    relative to the config tree (the shipped starter lists)."""
    given = Path(path)
    return given if given.is_absolute() or given.exists() else config_dir() / path


def read_list(path: str) -> list[str]:
    file = list_path(path)
    if not file.is_file():
        raise UserError("list file does not exist", file=path, expected="one term or domain a line, under configs/ "
                        "or a path from the working directory")
    entries = []
    for line in file.read_text(encoding="utf-8").splitlines():
        line = matching_form(line.split("#", 1)[0]).strip()
        if line:
            entries.append(line)
    return entries


def list_files(cfg: HarmfulConfig) -> list[Path]:
    return [list_path(p) for lists in (cfg.word_lists, cfg.url_lists) for files in lists.values() for p in files]


def _is_word_char(char: str) -> bool:
    return char.isascii() and char.isalnum()


class TermMatcher:
    """Which categories' terms occur in a text: category -> distinct terms found."""

    def __init__(self, word_lists: dict[str, list[str]]):
        import ahocorasick

        self.automaton = ahocorasick.Automaton()
        # term -> {is_prefix: categories}: "porn" in one list and "porn*" in another both count
        entries: dict[str, dict[bool, set[str]]] = defaultdict(lambda: defaultdict(set))
        for category, files in sorted(word_lists.items()):
            for path in files:
                for term in read_list(path):
                    key = term.rstrip("*")
                    if key:
                        entries[key][term.endswith("*")].add(category)
        for key, kinds in entries.items():
            self.automaton.add_word(key, (key, {prefix: frozenset(c) for prefix, c in kinds.items()}))
        self.empty = not entries
        if not self.empty:
            self.automaton.make_automaton()

    def __call__(self, text: str) -> dict[str, set[str]]:
        found: dict[str, set[str]] = defaultdict(set)
        if self.empty:
            return found
        text = matching_form(text)
        for end, (key, kinds) in self.automaton.iter(text):
            start = end - len(key) + 1
            if _is_word_char(key[0]) and start > 0 and _is_word_char(text[start - 1]):
                continue
            whole_word = not (_is_word_char(key[-1]) and end + 1 < len(text) and _is_word_char(text[end + 1]))
            for prefix, categories in kinds.items():
                if prefix or whole_word:
                    for category in categories:
                        found[category].add(key)
        return found


class DomainMatcher:
    """Listed domains a URL's host is, or is a subdomain of."""

    def __init__(self, url_lists: dict[str, list[str]]):
        self.domains: dict[str, set[str]] = defaultdict(set)
        for category, files in sorted(url_lists.items()):
            for path in files:
                for domain in read_list(path):
                    self.domains[domain.removeprefix("www.").strip(".")].add(category)

    def categories(self, host: str) -> dict[str, str]:
        """category -> the listed domain the host falls under."""
        labels = host.lower().strip(".").split(".")
        hits = {}
        for i in range(len(labels) - 1):
            domain = ".".join(labels[i:])
            for category in self.domains.get(domain, ()):
                hits.setdefault(category, domain)
        return hits

    def linked(self, text: str) -> dict[str, set[str]]:
        found: dict[str, set[str]] = defaultdict(set)
        if self.domains:
            for host in URL_HOST_RE.findall(text):
                for category, domain in self.categories(host).items():
                    found[category].add(domain)
        return found


def url_host(url: str) -> str:
    """The host of a URL, with or without a scheme, user info or port ('' when there is none)."""
    url = url.strip()
    try:
        return urlsplit(url if _SCHEME.match(url) else "//" + url).hostname or ""
    except ValueError:   # e.g. an invalid IPv6 literal
        return ""


class HarmfulLists:
    """The list verdict on one document: None, or `harmful.url:<category>` / `harmful.list:<category>`,
    with the terms that decided it."""

    def __init__(self, cfg: HarmfulConfig):
        self.min_terms = cfg.min_terms
        self.terms = TermMatcher(cfg.word_lists)
        self.domains = DomainMatcher(cfg.url_lists)

    def __call__(self, text: str, url: str | None = None) -> tuple[str | None, list[str]]:
        if url:
            own = self.domains.categories(url_host(url))
            if own:
                category = min(own)
                return f"harmful.url:{category}", [own[category]]
        found = self.terms(text)
        for category, domains in self.domains.linked(text).items():
            found[category] |= domains
        decisive = sorted((-len(hits), category) for category, hits in found.items() if len(hits) >= self.min_terms)
        if not decisive:
            return None, []
        category = decisive[0][1]
        return f"harmful.list:{category}", sorted(found[category])
