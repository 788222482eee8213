"""Content types and the rules that replaced web-page rules misfiring on good text (issue: filters
that keep good text). Real files: the bundled sample (Shakespeare, Python docs, CPython modules,
Chinese man pages) and files of packages installed from the lock (protobuf's generated modules,
grpc's licence-only __init__ files, numpy's reST README, tqdm's man page, lm-eval's Markdown)."""
from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from data_pipeline.__main__ import load_config
from data_pipeline.content_type import ContentTypeConfig, detect_content_type
from data_pipeline.filters import build_rule_sets
from data_pipeline.filters import english as en
from data_pipeline.filters import generic
from data_pipeline.filters.common import duplicate_fractions

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"


def package_file(package: str, relative: str) -> str:
    root = Path(importlib.util.find_spec(package).submodule_search_locations[0])
    return (root / relative).read_text(encoding="utf-8")


def sample(lang: str, source: str) -> list[str]:
    table = pq.read_table(SAMPLE / f"{lang}.parquet").to_pylist()
    return [row["text"] for row in table if row["source"] == source]


def content_type(text: str) -> str:
    return detect_content_type(text, ContentTypeConfig())[0]


@pytest.fixture(scope="module")
def rule_sets():
    return build_rule_sets(load_config([]).rules)


# --- content types on real files -----------------------------------------------------------------

def test_python_modules_are_code():
    modules = sample("code", "cpython-stdlib")
    assert len(modules) == 15
    assert [content_type(text) for text in modules] == ["code"] * 15


@pytest.mark.parametrize("package,relative", [
    ("sklearn", "datasets/descr/iris.rst"),     # reST
    ("tqdm", "tqdm.1"),                         # groff man page
    ("lm_eval", "tasks/ifeval/README.md"),      # Markdown
])
def test_markup_files_are_docs(package, relative):
    """(numpy's ma/README.rst, half of it >>> examples, is code by its lines: either type keeps it.)"""
    assert content_type(package_file(package, relative)) == "docs"


def test_python_doc_sources_are_never_judged_as_web_prose():
    """reST pages; the few that are mostly a code example count as code (their rules keep them too)."""
    types = [content_type(text) for text in sample("en", "python-doc")]
    assert types.count("docs") >= 0.8 * len(types) and types.count("prose") <= 1


@pytest.mark.parametrize("lang,source", [("en", "shakespeare"), ("zh", "fortunes-zh")])
def test_prose_and_verse_are_prose(lang, source):
    types = [content_type(text) for text in sample(lang, source)]
    assert types.count("prose") >= 0.9 * len(types), {t: types.count(t) for t in set(types)}


# --- C4's brace rule replaced by a rule for code residue -------------------------------------------

@pytest.fixture(scope="module")
def prose(rule_sets) -> str:
    """A real English page of web-page size that the web rules keep (a GNOME help page, no braces)."""
    pages = [text for text in sample("en", "gnome-help-en")
             if "{" not in text and rule_sets["en"](text) is None and 50 <= text.count("\n") < 100]
    return pages[0]


def with_snippet(page: str, snippet: str) -> str:
    paragraphs = page.split("\n\n")
    middle = len(paragraphs) // 2
    return "\n\n".join(paragraphs[:middle] + [snippet] + paragraphs[middle:])


@pytest.mark.parametrize("snippet", [
    "In C the record is declared as struct point { int x; int y; }; and passed by pointer.",
    "The set is written {1, 2, 3} and its power set has eight members.",
    r"Euler's identity, $e^{i\pi} + 1 = 0$, links five constants.",
    'Format it with "{:>10}".format(name) to right-align the column.',
    "Run make -C ${HOME}/src V=$(nproc) to build it, then export PATH=${PATH}:/opt/bin.",
])
def test_braces_in_prose_are_kept(snippet, rule_sets, prose):
    text = with_snippet(prose, snippet)
    assert en.c4(en.EnglishText(text), {"curly_braces": True}) == "c4.curly_braces"      # C4's rule: removed
    assert en.c4(en.EnglishText(text), {"max_code_leftover_line_ratio": 0.0}) is None    # now kept
    assert rule_sets["en"](text) is None


@pytest.mark.parametrize("snippet", [
    "function trackClick(e) { dataLayer.push({event: 'click'}); }",
    "var _gaq = _gaq || []; _gaq.push(['_setAccount', 'UA-1']);",
    "$(document).ready(function(){ $('.menu').hide(); });",
    "Hello {{ user.first_name }}, your order {{ order.id }} has shipped.",
    "{% if user.is_authenticated %} Welcome back! {% endif %}",
    "gtag('config', 'G-12345'); window.dataLayer = window.dataLayer || [];",
])
def test_script_and_template_residue_is_removed(snippet, rule_sets, prose):
    text = with_snippet(prose, snippet)
    assert en.c4(en.EnglishText(text), {"max_code_leftover_line_ratio": 0.0}) == "c4.max_code_leftover_line_ratio"
    assert rule_sets["en"](text) == "c4.max_code_leftover_line_ratio"


def test_a_book_quoting_a_few_lines_of_script_is_kept(rule_sets):
    book = "\n\n".join(sample("en", "shakespeare") + sample("en", "python-doc"))
    quoted = with_snippet(book, "$(document).ready(function(){ $('.menu').hide(); });")
    assert en.c4(en.EnglishText(quoted), {"max_code_leftover_line_ratio": 0.0}) == "c4.max_code_leftover_line_ratio"
    assert rule_sets["en"](quoted) is None


# --- repeated lines: speaker names and table rulings are not boilerplate ---------------------------

def test_speaker_names_and_rulings_do_not_count_as_repeats():
    play = "\n".join(["HAMLET.", "To be, or not to be, that is the question:", "OPHELIA.",
                      "Good my lord, how does your honour for this many a day?", "HAMLET.",
                      "I humbly thank you; well, well, well.", "+-----+-----+", "+-----+-----+"])
    lines = play.split("\n")
    assert duplicate_fractions(lines)[1] == pytest.approx(len("HAMLET.") / sum(map(len, lines)))  # Gopher: counted
    assert duplicate_fractions(lines, min_chars=30) == (0.0, 0.0)
    boilerplate = lines + ["Share this article with your friends and family today"] * 2
    assert duplicate_fractions(boilerplate, min_chars=30)[0] == pytest.approx(1 / len(boilerplate))


def test_shakespeare_sample_is_kept(rule_sets):
    """The plays failed FineWeb's duplicate-line rule on speaker names (and C4's brace rule on the
    Gutenberg notes); the web rules still judge them, only these two misfires are gone."""
    plays = sample("en", "shakespeare")
    kept = [text for text in plays if rule_sets["en"](text) is None]
    assert len(kept) >= 0.9 * len(plays)


def test_repeated_boilerplate_line_still_fails_fineweb(prose):
    line = "Subscribe to our newsletter for the latest deals and offers every week!"
    text = "\n".join([line, prose, line])
    assert en.fineweb(en.EnglishText(text), {"min_dup_line_chars": 30, "max_dup_line_char_ratio": 0.01}) \
        == "fineweb.max_dup_line_char_ratio"


# --- code rules (The Stack / StarCoder style) ---------------------------------------------------

def code_reason(text: str, rule_sets) -> str | None:
    return rule_sets["code"](text)


def test_hand_written_modules_pass_the_code_rules(rule_sets):
    assert [code_reason(text, rule_sets) for text in sample("code", "cpython-stdlib")] == [None] * 15


def test_generated_protobuf_module_is_removed(rule_sets):
    text = package_file("google.protobuf", "descriptor_pb2.py")
    assert content_type(text) == "code"
    assert code_reason(text, rule_sets) == "code.autogenerated"


def test_licence_header_only_file_is_removed(rule_sets):
    text = package_file("grpc", "beta/__init__.py")
    assert "Licensed under the Apache License" in text
    assert code_reason(text, rule_sets) == "code.min_code_lines"


def test_numeric_table_module_is_removed(rule_sets):
    text = package_file("idna", "idnadata.py")
    assert generic.code(generic.PlainText(text), {"max_digit_ratio": 0.5}) == "code.max_digit_ratio"
    assert code_reason(text, rule_sets) is not None


def test_long_documents_are_not_removed_for_length(rule_sets):
    book = "\n\n".join(sample("en", "shakespeare") + sample("en", "python-doc"))   # an anthology, 1.2 MB
    assert len(book.split()) > 100_000
    assert rule_sets["en"](book) is None


def test_json_data_file_is_removed(rule_sets):
    """A real CycloneDX SBOM (JSON) that installed wheels carry: it looks like code by its lines."""
    dist = importlib.metadata.distribution("filelock")
    sbom = next(f for f in dist.files if str(f).endswith(".cdx.json"))
    text = Path(dist.locate_file(sbom)).read_text(encoding="utf-8")
    assert content_type(text) == "code"
    assert code_reason(text, rule_sets) == "code.max_data_line_ratio"


def test_numbered_sections_make_a_manual_docs():
    chapter = "\n\n".join(["2.4. Create HTML Files", "Once XML files have been validated, run make html-en.",
                           "2.5. Sending your files", "Report a bug in GIMP."])
    assert content_type(chapter) == "docs"
    news = "\n\n".join(["Prices rose 2.4 percent in May.", "Analysts expect 3.1 percent next year."])
    assert content_type(news) == "prose"


def test_repeated_labels_are_not_spam(rule_sets):
    """API reference pages repeat "Syntax:", "Example:", "Yes"; repeated sentences still count."""
    labels = ["Syntax:", "Example:", "Parameters:", "Yes", "No"] * 6
    assert duplicate_fractions(labels, min_chars=15) == (0.0, 0.0)
    spam = ["Buy cheap watches online today, free shipping!"] * 6 + ["Contact us."]
    assert duplicate_fractions(spam, min_chars=15)[0] == pytest.approx(5 / 7)


def test_chinese_table_rulings_are_not_repeated_phrases():
    from data_pipeline.filters import chinese as zh

    cells = [("ls", "列出目录内容"), ("cp", "复制文件和目录"), ("mv", "移动或重命名文件"), ("rm", "删除文件"),
             ("cat", "连接并显示文件"), ("grep", "按模式搜索文本"), ("chmod", "改变文件权限"), ("ps", "报告进程状态")]
    rows = [line for cmd, what in cells for line in ("├────────┼────────────────┤", f"│ {cmd:6} │ {what} │")]
    table = "\n".join(["1.2.5. 常用命令", "下表列出最常用的文件命令。"] + rows)
    params = {"max_top_ngram_char_ratio": [[2, 0.25]]}
    assert zh.repetition(zh.ChineseText(table), params) is None
    assert zh.repetition(zh.ChineseText("免费领取" * 10), params) == "repetition.max_top_ngram_char_ratio"


def test_docs_rules_keep_manual_pages_and_remove_an_embedded_blob(rule_sets):
    """The Python documentation sample (reST with code samples, which C4's brace rule and FineWeb's
    repeated-line rule used to remove) passes the docs rules; a minified script pasted in does not."""
    pages = [text for text in sample("en", "python-doc") if content_type(text) == "docs"]
    assert len(pages) >= 40 and [rule_sets["docs"](text) for text in pages] == [None] * len(pages)
    minified = "var a=" + ",".join(f"b{i}=function(c){{return c*{i}}}" for i in range(400)) + ";"
    assert rule_sets["docs"](with_snippet(pages[0], minified)) == "docs.max_line_chars"


def test_table_rows_are_not_judged_as_sentences():
    from data_pipeline.filters import chinese as zh

    rows = ["┌────────┬────────────────┐", "│ 快捷键 │ 键绑定功能     │", "├────────┼────────────────┤",
            "│ F1     │ 帮助菜单       │", "│ F3     │ 内部文件查看器 │", "└────────┴────────────────┘"]
    page = "\n".join(["默认的两个目录面板里包含了文件列表。", "接下来是一些必要的快捷键。", *rows])
    params = {"min_line_punct_ratio": 0.5}
    assert zh.lines(zh.ChineseText(page), params) is None          # 2 of 2 sentences end in 。
    menu = "\n".join(["首页", "产品中心", "新闻动态", "联系我们", "默认的两个目录面板里包含了文件列表。", *rows])
    assert zh.lines(zh.ChineseText(menu), params) == "lines.min_line_punct_ratio"   # 1 of 5 does


def test_api_reference_labels_make_docs():
    reference = "\n\n".join(["SF_Array.Append", "Appends the items to the end of the array.", "Syntax:",
                             "svc.Append(array_1d: any[0..*], arg0: any, [arg1: any] ...): any[0..*]",
                             "Parameters:", "array_1d: The pre-existing array.", "Example:",
                             "Dim a As Variant", "a = SF_Array.Append(Array(1, 2, 3), 4, 5)"])
    assert content_type(reference) == "docs"
    article = "\n\n".join(["For example: the council approved the budget on Monday.",
                           "The syntax of the new law was criticised by several members."])
    assert content_type(article) == "prose"


# --- help pages: procedures, hard-wrapped prose, function references (tests/data/help_pages) -------

HELP_PAGES = REPO / "tests" / "data" / "help_pages"


def help_page(name: str) -> str:
    return (HELP_PAGES / name).read_text(encoding="utf-8")


@pytest.mark.parametrize("name", ["gnome_appearance.txt", "gnome_printers_jobs.txt"])
def test_procedure_steps_make_a_help_page_docs(name, rule_sets):
    """Help pages repeat a step for each alternative ("Open the Activities overview and start typing
    Printers."); judged as web prose they failed FineWeb's repeated-line rule."""
    page = help_page(name)
    assert rule_sets["en"](page) == "fineweb.max_dup_line_char_ratio"    # the old routing
    assert content_type(page) == "docs"
    assert rule_sets["docs"](page) is None


def test_calls_to_action_are_not_procedure_steps():
    page = "\n\n".join(["Best deals of the week on phones and laptops, updated daily by our editors.",
                        "Click here to see all offers.", "Click here to subscribe to our newsletter.",
                        "Select this to get a coupon.", "Press now and win a prize!"])
    assert content_type(page) == "prose"
    shop = "\n\n".join(["Summer dress, cotton, blue", "Select your size", "Choose your color", "Click Add to cart",
                         "Free shipping over $50"])
    assert content_type(shop) == "prose"        # buttons, not sentences
    steps = "\n\n".join(["To print a page:", "Click the menu button.", "Select Print."])
    assert content_type(steps) == "docs"


def test_hard_wrapped_fragments_are_not_repeated_lines(rule_sets):
    """Line rules judge the lines of hard-wrapped prose joined back into sentences."""
    page = help_page("gnome_processes.txt")
    fragment = "For extended information, see the man page for"
    assert page.count(fragment + "\n") == 5
    text = en.EnglishText(page)
    assert duplicate_fractions(text.lines, 30)[1] > 0.01           # physical lines: 5 repeats
    assert duplicate_fractions(text.logical_lines, 30)[1] == 0.0    # each joined to its daemon's name
    assert "For extended information, see the man page for dbus-daemon." in text.logical_lines
    assert content_type(page) == "prose" and rule_sets["en"](page) is None


def test_verse_and_headings_are_not_joined():
    from data_pipeline.lines import logical_lines

    verse = ("To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"
             "The slings and arrows")
    assert logical_lines(verse) == verse.split("\n")        # short lines starting in upper case stay apart
    wrapped = ("Even though the wireless adapter is connected to the computer, it may not\n"
               "have been recognized as a network device.\n\nCheck the adapter\nIt should be listed.")
    assert logical_lines(wrapped) == [
        "Even though the wireless adapter is connected to the computer, it may not have been recognized as a "
        "network device.", "Check the adapter", "It should be listed."]


def test_repeated_line_of_a_hard_wrapped_spam_page_still_fails(prose):
    line = "Subscribe to our newsletter for the latest deals and offers every week!"
    wrapped = "\n".join([line, "Our prices are the lowest on the web and we ship to every country in the",
                         "world within two days.", prose, line])
    assert en.fineweb(en.EnglishText(wrapped), {"min_dup_line_chars": 30, "max_dup_line_char_ratio": 0.01}) \
        == "fineweb.max_dup_line_char_ratio"


def test_function_reference_page_passes_the_docs_rules(rule_sets):
    """A reference page repeats each parameter's description per function (43% of its characters);
    a page that is mostly one repeated block still fails."""
    page = help_page("libreoffice_statistical_functions.txt")
    assert content_type(page) == "docs"
    ratio = duplicate_fractions(generic.nonempty_lines(page), 30)[1]
    assert 0.4 < ratio < 0.5
    assert rule_sets["docs"](page) is None
    paragraph = max(page.split("\n\n"), key=len)
    spammed = "\n\n".join([page[:3000]] + [paragraph] * 60)
    assert rule_sets["docs"](spammed) == "docs.max_dup_line_char_ratio"
