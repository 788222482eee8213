"""normalize + clean_lines on real and realistic text (tests/data/fidelity, origins and licences
in its README): good text comes out byte for byte under every language's rules, boilerplate and
garbage lines still go, and every change to a kept document is counted under its reason."""
from __future__ import annotations

import base64
import importlib.util
import unicodedata
from pathlib import Path

import pytest

from data_pipeline.__main__ import load_config
from data_pipeline.clean_lines import LineCleaner
from data_pipeline.config import NormalizeConfig
from data_pipeline.normalize import normalize_text
from data_pipeline.readers import Document
from data_pipeline.steps import CleanLines, Normalize, utf8_len

FIDELITY = Path(__file__).parent / "data" / "fidelity"
LANGS = ("en", "zh", "code", "other")

# Each good sample with the features it is there for: if the data lost them, the test would prove nothing.
GOOD = {
    "python_aligned_comments.py.txt": ["ST_MODE  = 0\n", "S_IFDIR  = 0o040000  # directory\n"],
    "python_tabs.py.txt": ["\n\t# first look into the standard locale dir, then into the \n", "\n        \n",
                           "if os.path.exists(mofile_lp): \n"],
    "table.tsv": ["subject\tname\tcategory\n", "\t牙醫學\thealth\n"],
    "markdown_readme.md": ["```python\n", "|--------------------|:--------:|", "## ⚡ Performance"],
    "markdown_fences.md": ["lines of JavaScript.  \n", "```javascript\n", "| sort | uniq -c | sort -rn | head",
                           "\na\tb\t\n"],
    "emoji_zwj.txt": ["\U0001F468\u200d\U0001F469\u200d\U0001F467\u200d\U0001F466", "\U0001F3F3\ufe0f\u200d\U0001F308",
                      "\u0645\u06cc\u200c\u062e", "\u0dca\u200d\u0dbb"],
    "zh_long_paragraph.txt": ["造纸术与印刷术", "毕昇发明了活字印刷术"],
    "zh_classical.txt": ["《琵琶行・并序》\n", "同是天涯沦落人，相逢何必曾相识。"],
    "mixed_zh_en.txt": ['columns=["id", "text"]', "O(n²)"],
    "fr.txt": ["France\u202f: elle", "«\u00a0Pourquoi"],
    "de.txt": ["„Können Sie", "Straßenbahn"],
    "es.txt": ["¿Sabías", "¡Es una", "pingüino"],
    "ja.txt": ["地下鉄\u3000日比谷線", "ＪＲ線"],
    "ko.txt": ["서울은 대한민국의 수도이며", '"김치찌개하고'],
    "ru.txt": ["Москва — столица", "«Вы не подскажете"],
    "ar.txt": ["١٢٠٬٠٠٠", "تُعَدّ"],
    "latex_math.tex": ["  &= -\\frac{1}{T}", "\n                      &= ", "  schedule    & peak lr          &"],
}

# Web pages: their boilerplate lines, by reason, under the language the page is in.
WEB_PAGES = {
    ("url_page.txt", "en"): {
        "navigation": ["Home | Docs | Downloads | Blog | Contact"],
        "policy": ["Privacy Policy · Terms of Use"],
        "copyright": ["© 2024 Example Tokenizer Project. All rights reserved."],
    },
    ("zh_web_page.txt", "zh"): {
        "navigation": ["首页 | 新闻 | 科技 | 文化 | 联系我们",
                       "上一篇：活字印刷在朝鲜半岛的传播　下一篇：宣纸是怎样制成的"],
        "social": ["扫描二维码关注我们的微信公众号，获取更多精彩内容"],
        "takedown": ["本站部分内容来自网络，如有侵权请联系删除"],
        "copyright": ["版权所有 © 2024 某某文化网 保留所有权利"],
    },
}


def read_doc(name: str) -> str:
    return (FIDELITY / name).read_text(encoding="utf-8").removesuffix("\n")


@pytest.fixture(scope="module")
def cfg():
    return load_config([])


def run_stages(cfg, texts: list[str], lang: str):
    """normalize then clean_lines, as the pipeline runs them, on documents labelled `lang`."""
    normalize, clean = Normalize(cfg), CleanLines(cfg)
    docs = []
    for i, text in enumerate(texts):
        doc = Document(id=str(i), text=text, source="fidelity", lang=lang)
        for step in (normalize, clean):
            reason, _ = step(doc, utf8_len(doc.text))
            assert reason is None, (step.name, reason)
        docs.append(doc)
    return docs, normalize.stats(), clean.stats()


def test_every_sample_is_listed_and_has_its_features():
    listed = set(GOOD) | {name for name, _ in WEB_PAGES} | {"minified.css.txt", "README.md"}
    assert {p.name for p in FIDELITY.iterdir()} == listed
    for name, features in GOOD.items():
        text = read_doc(name)
        assert unicodedata.is_normalized("NFC", text), name
        for feature in features:
            assert feature in text, (name, feature)
    assert len(read_doc("zh_long_paragraph.txt")) >= 3000
    assert not any(ch.isspace() for ch in read_doc("zh_long_paragraph.txt"))


@pytest.mark.parametrize("lang", LANGS)
@pytest.mark.parametrize("name", sorted(GOOD))
def test_good_text_comes_out_unchanged(cfg, name, lang):
    text = read_doc(name)
    docs, normalize_stats, clean_stats = run_stages(cfg, [text], lang)
    assert docs[0].text == text
    assert normalize_stats["changes"] == {} and normalize_stats["docs_changed"] == 0
    assert clean_stats["lines_removed"] == {} and clean_stats["docs_changed"] == 0


@pytest.mark.parametrize("name,lang", sorted(WEB_PAGES))
def test_web_page_loses_exactly_its_boilerplate(cfg, name, lang):
    text = read_doc(name)
    boilerplate = WEB_PAGES[name, lang]
    drop = {line for lines in boilerplate.values() for line in lines}
    expected = "\n".join(line for line in text.split("\n") if line not in drop)
    docs, normalize_stats, clean_stats = run_stages(cfg, [text], lang)
    assert docs[0].text == expected
    assert normalize_stats["changes"] == {}
    assert clean_stats["lines_removed"] == {reason: len(lines) for reason, lines in boilerplate.items()}
    assert clean_stats["changes"] == {reason: 1 for reason in boilerplate}
    assert sum(clean_stats["chars_removed"].values()) == len(text) - len(expected)


def hand_png_base64() -> str:
    """A real PNG (matplotlib's toolbar icon) as a data URI: 1,308 base64 characters."""
    package = Path(importlib.util.find_spec("matplotlib").submodule_search_locations[0])
    return base64.b64encode((package / "mpl-data" / "images" / "hand.png").read_bytes()).decode()


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_base64_blob_and_minified_css_lines_still_removed(cfg, lang):
    prose = read_doc("zh_long_paragraph.txt") if lang == "zh" else read_doc("python_aligned_comments.py.txt")
    blob = f'<img alt="hand" src="data:image/png;base64,{hand_png_base64()}">'
    minified = read_doc("minified.css.txt").split("\n")[1]
    docs, _, clean_stats = run_stages(cfg, ["\n".join([prose, blob, minified, "The end."])], lang)
    assert docs[0].text == prose + "\nThe end."
    assert clean_stats["lines_removed"] == {"max_word_chars": 2}
    assert clean_stats["chars_removed"] == {"max_word_chars": len(blob) + len(minified) + 2}


def test_long_cjk_and_thai_lines_are_judged_by_characters():
    cleaner = LineCleaner({"max_word_chars": 1000})
    zh = read_doc("zh_long_paragraph.txt")
    ja = "日本語の文章は単語の間に空白を入れずに書かれます。" * 60          # 1,500 characters
    thai = "ภาษาไทยเขียนคำติดกันโดยไม่เว้นวรรคระหว่างคำ" * 30     # 1,290 characters
    latin_run = "x" * 1001
    assert cleaner(zh) == zh and cleaner(ja) == ja and cleaner(thai) == thai
    # a garbage run inside a CJK line still counts, on its own: 1,001 Latin letters between Han characters
    assert cleaner("\n".join([zh, "图片" + latin_run + "。"])) == zh
    assert dict(cleaner.removed) == {"max_word_chars": 1}


def test_code_fences_are_not_boilerplate(cfg):
    cleaner = LineCleaner(cfg.rules["en"]["clean_lines"])
    notice = "Please enable JavaScript to view the comments."
    doc = "\n".join(["Intro.", "```javascript", "a | b | c", notice, "```", notice, "~~~", "x | y | z", "~~~"])
    assert cleaner(doc) == "\n".join(["Intro.", "```javascript", "a | b | c", notice, "```", "~~~", "x | y | z", "~~~"])
    assert dict(cleaner.removed) == {"javascript": 1}


def counted(cfg, texts: list[str]) -> tuple[list[str], dict]:
    normalize = Normalize(cfg)
    out = []
    for i, text in enumerate(texts):
        doc = Document(id=str(i), text=text, source="t")
        assert normalize(doc, utf8_len(text))[0] is None
        out.append(doc.text)
    stats = normalize.stats()
    return out, {"docs": stats["docs_changed"], "changes": stats["changes"], "chars": stats["chars_removed"]}


def test_normalize_counts_each_change_under_its_reason(cfg):
    tabs = read_doc("python_tabs.py.txt")
    german = read_doc("de.txt")
    emoji = read_doc("emoji_zwj.txt")
    n_lines = tabs.count("\n") + 1
    out, stats = counted(cfg, [
        tabs.replace("\n", "\r\n"),                     # Windows line endings
        tabs + "\n",                                    # a file's final newline
        unicodedata.normalize("NFD", german),           # decomposed umlauts and ß-free NFD
        "\ufeff" + emoji.replace("ZWJ", "Z\u200bWJ"),   # BOM and a zero width space; ZWJ/ZWNJ stay
        "bell\x07 and\x00 nul",                         # control characters
        "a\n\n\n\n\n\nb",                               # 5 blank lines, 2 allowed
        "nothing to do",
    ])
    assert out == [tabs, tabs, german, emoji, "bell and nul", "a\n\n\nb", "nothing to do"]
    nfd_extra = len(unicodedata.normalize("NFD", german)) - len(german)
    assert nfd_extra > 10
    assert stats == {"docs": 6,
                     "changes": {"line_endings": 1, "edge_newlines": 1, "nfc": 1, "invisible_chars": 1,
                                 "control_chars": 1, "blank_lines": 1},
                     "chars": {"line_endings": n_lines - 1, "edge_newlines": 1, "nfc": nfd_extra,
                               "invisible_chars": 1 + emoji.count("ZWJ"), "control_chars": 2, "blank_lines": 3}}


def test_cjk_compatibility_ideographs_folded_and_counted_or_kept(cfg):
    # U+F914 (樂, a Korean-reading duplicate) folds to U+6A02; U+FA11 (﨑) is a unified ideograph and stays
    text = "\uf914園と山\ufa11さん"
    out, stats = counted(cfg, [text])
    assert out == ["\u6a02園と山\ufa11さん"]
    assert stats["changes"] == {"cjk_compat_ideographs": 1} and stats["chars"] == {"cjk_compat_ideographs": 0}
    keep = load_config(["normalize.nfc_keep_cjk_compat=true"])
    out, stats = counted(keep, [text, "Cafe\u0301 \uf914"])
    assert out == [text, "Café \uf914"] and stats["changes"] == {"nfc": 1}


def test_emptied_documents_are_excluded_not_counted(cfg):
    normalize = Normalize(cfg)
    doc = Document(id="1", text="\u200b\r\n\x07", source="t")
    assert normalize(doc, 6)[0] == "normalize.empty"
    assert doc.text == "\u200b\r\n\x07"                   # the excluded row keeps what came in
    assert normalize.stats()["changes"] == {} and normalize.stats()["docs_changed"] == 0
    clean = CleanLines(cfg)
    notice = Document(id="2", text="Privacy Policy | Terms of Use | Contact", source="t", lang="en")
    assert clean(notice, 40)[0] == "clean_lines.empty"
    assert notice.text == "Privacy Policy | Terms of Use | Contact"
    assert clean.stats()["lines_removed"] == {} and clean.stats()["changes"] == {}


def test_keep_original_holds_the_input_of_changed_documents_only():
    cfg = load_config(["normalize.keep_original=true"])
    normalize = Normalize(cfg)
    table = read_doc("table.tsv")
    changed = Document(id="1", text=table.replace("\n", "\r\n") + "\r\n", source="t")
    same = Document(id="2", text=table, source="t")
    for doc in (changed, same):
        normalize(doc, utf8_len(doc.text))
    assert changed.text == table and changed.annotations["original_text"] == table.replace("\n", "\r\n") + "\r\n"
    assert same.text == table and "original_text" not in same.annotations


def test_old_whitespace_collapsing_is_opt_in_and_spares_indentation_and_tabs():
    code = read_doc("python_aligned_comments.py.txt")
    collapsed = normalize_text(code, NormalizeConfig(collapse_spaces=True))
    assert "S_IFDIR = 0o040000 # directory" in collapsed        # what the option does, hence off by default
    tsv = read_doc("table.tsv")
    assert normalize_text(tsv, NormalizeConfig(collapse_spaces=True)) == tsv
    indented = "def f():\n        return  1"
    assert normalize_text(indented, NormalizeConfig(collapse_spaces=True)) == "def f():\n        return 1"


@pytest.mark.parametrize("line,removed", [
    ("Home | About | Contact | Privacy Policy", True),
    ("Share on Facebook | Share on Twitter | Email", True),
    ("Login | Register | Forgot password?", True),
    ("Please enable JavaScript to view the comments.", True),
    ("JavaScript seems to be disabled in your browser.", True),
    ("Your browser does not support JavaScript!", True),
    # content the plain C4 / "anything between pipes" rules used to remove
    ("[ -V | --version ] [ -h | --help ]", False),
    ("kill [-s sigspec | -n signum | -sigspec] [pid | jobspec] ...", False),
    ('cache_metadata_mode := "fail" | "ro" | "rw"', False),
    ("WHITE = RED | BLUE | GREEN", False),
    ("METH_METHOD | METH_FASTCALL | METH_KEYWORDS", False),
    ("grep -v foo access.log | sort | uniq -c", False),
    ("postfix | sendmail | exim4 | …", False),
    ("| tool | lines | notes |", False),
    ("JavaScript is a programming language used on most websites.", False),
    ("TypeScript adds static types to JavaScript.", False),
])
def test_en_boilerplate_rules_on_both_sides(cfg, line, removed):
    cleaner = LineCleaner(cfg.rules["en"]["clean_lines"])
    doc = "A first line of text.\n" + line
    assert cleaner(doc) == ("A first line of text." if removed else doc)


@pytest.mark.parametrize("line,removed", [
    ("首页 | 关于我们 | 联系我们 | 隐私政策", True),
    ("上一篇：活字印刷的传播　下一篇：宣纸", True),
    ("-a on|1|off|0", False),
    ("kill [-s 信号 | -n 信号编号] [进程号 | 作业号] ...", False),
])
def test_zh_navigation_rule_on_both_sides(cfg, line, removed):
    cleaner = LineCleaner(cfg.rules["zh"]["clean_lines"])
    doc = "第一行正文。\n" + line
    assert cleaner(doc) == ("第一行正文。" if removed else doc)
