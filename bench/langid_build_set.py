"""Build the labelled language-ID set (bench/data/langid/labelled.jsonl) and its test subset
(tests/data/langid/samples.jsonl) from text nobody here wrote; see tests/data/langid/README.md.

Labels come from where each text was published (the translation's language), never from a
detector. Sources: the Universal Declaration of Human Rights translations in the Unicode UDHR
XML format (git repository twardoch/udhr-custom, commit ce07ad03, data/udhr/udhr_<key>.xml),
and PostgreSQL 15's message catalogues (Debian postgresql-15, /usr/share/locale/<ll>/LC_MESSAGES/
postgres-15.mo; PostgreSQL Licence).

    python bench/langid_build_set.py --udhr-git /path/to/udhr-custom/.git
"""
from __future__ import annotations

import argparse
import gettext
import json
import re
import subprocess
import sys
import unicodedata
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from stack_common.atomic import atomic_open  # noqa: E402

UDHR_COMMIT = "ce07ad032968d2d816c7ee8c220529cc18363660"
UDHR_NS = "{http://www.unhchr.ch/udhr}"
# UDHR file key -> (label, variant)
UDHR = {"eng": ("en", "en"), "fra": ("fr", "fr"), "deu_1996": ("de", "de"), "spa": ("es", "es"),
        "rus": ("ru", "ru"), "arb": ("ar", "ar"), "jpn": ("ja", "ja"), "kor": ("ko", "ko"),
        "cmn_hans": ("zh", "zh-Hans"), "cmn_hant": ("zh", "zh-Hant"), "yue": ("zh", "yue"),
        "ita": ("it", "it"), "por_PT": ("pt", "pt"), "nld": ("nl", "nl"), "pol": ("pl", "pl"),
        "tur": ("tr", "tr"), "ukr": ("uk", "uk"), "vie": ("vi", "vi"), "hin": ("hi", "hi"),
        "tha": ("th", "th"), "ind": ("id", "id"), "heb": ("he", "he")}
# PostgreSQL locale directory -> (label, variant)
PG_LOCALES = {"de": ("de", "de"), "es": ("es", "es"), "fr": ("fr", "fr"), "it": ("it", "it"), "ja": ("ja", "ja"),
              "ko": ("ko", "ko"), "ru": ("ru", "ru"), "sv": ("sv", "sv"), "uk": ("uk", "uk"),
              "zh_CN": ("zh", "zh-Hans")}
PG_PER_LANG = 40
SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s*")
LETTER = re.compile(r"[^\W\d_]")
HAN = re.compile(r"[\u3400-\u9fff]")
KANA = re.compile(r"[\u3040-\u30ff]")


def udhr_rows(git_dir: str) -> list[dict]:
    rows = []
    for key, (lang, variant) in UDHR.items():
        xml = subprocess.run(["git", f"--git-dir={git_dir}", "show", f"{UDHR_COMMIT}:data/udhr/udhr_{key}.xml"],
                             check=True, capture_output=True).stdout
        for article in ET.fromstring(xml).iter(UDHR_NS + "article"):
            paras = []
            for node in article.iter():
                if node.tag in (UDHR_NS + "para", UDHR_NS + "listitem"):
                    text = " ".join("".join(node.itertext()).split())
                    if text and text not in paras:
                        paras.append(text)
            text = unicodedata.normalize("NFC", "\n".join(paras))
            base = {"source": f"udhr_{key} art. {article.get('number')}", "lang": lang, "variant": variant}
            rows.append({**base, "kind": "paragraph", "text": text})
            first = SENTENCE_END.split(text.split("\n")[0])[0]
            if len(first) >= 12 and first != text:
                rows.append({**base, "kind": "sentence", "text": first})
    return rows


def pg_strings(locale: str) -> list[str]:
    path = Path(f"/usr/share/locale/{locale}/LC_MESSAGES/postgres-15.mo")
    with path.open("rb") as fh:
        catalog = gettext.GNUTranslations(fh)._catalog
    out = []
    for msgid, msgstr in sorted(catalog.items(), key=lambda kv: str(kv[0])):
        if isinstance(msgid, tuple) or not msgid or not isinstance(msgstr, str) or msgstr == msgid:
            continue
        out.append(msgstr.strip())
    return out


def is_kanji_heavy(text: str) -> bool:
    letters = len(LETTER.findall(text)) or 1
    return len(HAN.findall(text)) >= 8 and len(HAN.findall(text)) / letters >= 0.7


def pg_rows() -> list[dict]:
    rows = []
    for locale, (lang, variant) in PG_LOCALES.items():
        strings = [s for s in pg_strings(locale) if len(LETTER.findall(s)) >= 25 or is_kanji_heavy(s)]
        step = max(1, len(strings) // PG_PER_LANG)
        for text in strings[::step][:PG_PER_LANG]:
            rows.append({"source": f"postgres-15.mo {locale}", "lang": lang, "variant": f"{variant} ui", "kind": "ui",
                         "text": text})
        if locale == "ja":
            rows += [{"source": "postgres-15.mo ja", "lang": "ja", "variant": "ja kanji-heavy", "kind": "ui",
                      "text": s} for s in strings if is_kanji_heavy(s)]
    return rows


def test_subset(rows: list[dict]) -> list[dict]:
    """Five paragraphs and five sentences of each UDHR language in the tests, every kanji-heavy
    Japanese string, five UI strings per PostgreSQL language."""
    taken: dict[tuple, int] = {}
    out = []
    for row in rows:
        key = (row["variant"], row["kind"])
        limit = 10_000 if row["variant"] == "ja kanji-heavy" else 5
        if taken.get(key, 0) < limit and (row["kind"] != "paragraph" or len(row["text"]) >= 60):
            taken[key] = taken.get(key, 0) + 1
            out.append(row)
    return out


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with atomic_open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--udhr-git", required=True, help="git directory of twardoch/udhr-custom")
    args = parser.parse_args()
    rows = udhr_rows(args.udhr_git) + pg_rows()
    write_jsonl(REPO / "bench/data/langid/labelled.jsonl", rows)
    subset = test_subset(rows)
    write_jsonl(REPO / "tests/data/langid/samples.jsonl", subset)
    print(f"{len(rows)} labelled texts, {len(subset)} in the test subset")
    return 0


if __name__ == "__main__":
    sys.exit(main())
