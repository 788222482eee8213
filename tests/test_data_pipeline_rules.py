"""Every heuristic rule, on both sides of its threshold, in English and Chinese; plus the
default rule sets on realistic good and bad documents, line cleaning, normalization and
language annotation."""
from __future__ import annotations

import pytest

from data_pipeline.__main__ import load_config
from data_pipeline.clean_lines import LineCleaner
from data_pipeline.config import LangConfig, NormalizeConfig
from data_pipeline.filters import build_rule_sets
from data_pipeline.filters import chinese as zh
from data_pipeline.filters import english as en
from data_pipeline.filters import generic
from data_pipeline.lang import annotate_language, build_detector
from data_pipeline.normalize import normalize_text

EPS = 1e-6
FOX = "The quick brown fox jumps over the lazy sleeping dog."   # 10 words, 43 word characters


def lines(*items: str) -> str:
    return "\n".join(items)


# (rule, view, text, threshold key, measured value, "min" or "max", other params)
EN_CASES = [
    (en.gopher_quality, "\n".join([FOX] * 6), "min_words", 60, "min"),
    (en.gopher_quality, "\n".join([FOX] * 6), "max_words", 60, "max"),
    (en.gopher_quality, "\n".join([FOX] * 6), "min_mean_word_length", 4.3, "min"),
    (en.gopher_quality, "\n".join([FOX] * 6), "max_mean_word_length", 4.3, "max"),
    # 3 symbols ("#" twice, "..." once) over 60 words
    (en.gopher_quality, lines("# " + FOX, "# " + FOX, FOX + "...", FOX, FOX, FOX), "max_symbol_word_ratio", 3 / 60, "max"),
    (en.gopher_quality, lines("- " + FOX, "* " + FOX, "• " + FOX, FOX, FOX, FOX), "max_bullet_lines_ratio", 0.5, "max"),
    (en.gopher_quality, lines(FOX + "..", FOX + " …", FOX, FOX, FOX, FOX), "max_ellipsis_lines_ratio", 2 / 6, "max"),
    # 60 word tokens + 20 number tokens: 60 of 80 whitespace tokens contain a letter
    (en.gopher_quality, lines(*[FOX + " 1 2 3 4" if i < 5 else FOX for i in range(6)]), "min_alpha_words_ratio", 60 / 80, "min"),
    (en.gopher_repetition, lines(FOX, FOX, "A second line of text.", "A third one.", "A third one.", "Last."),
     "max_dup_line_ratio", 2 / 6, "max"),
    (en.gopher_repetition, lines("Alpha beta gamma.", "", "Delta.", "", "Alpha beta gamma.", "", "Epsilon zeta."),
     "max_dup_para_ratio", 1 / 4, "max"),
    # duplicate line chars: 17 of 17+6+17+13 = 53 characters
    (en.gopher_repetition, lines("Alpha beta gamma.", "Delta.", "Alpha beta gamma.", "Epsilon zeta."),
     "max_dup_line_char_ratio", 17 / 53, "max"),
    # paragraphs of 17, 6, 17 and 13 characters, the third repeating the first: 17 of 53 characters
    (en.gopher_repetition, lines("Alpha beta gamma.", "", "Delta.", "", "Alpha beta gamma.", "", "Epsilon zeta."),
     "max_dup_para_char_ratio", 17 / 53, "max"),
    # repeats shorter than min_dup_line_chars do not count: the 6-character repeat is ignored at 7
    (en.gopher_repetition, lines("Alpha beta gamma.", "Delta.", "Alpha beta gamma.", "Delta."),
     "max_dup_line_char_ratio", 17 / 46, "max", {"min_dup_line_chars": 7}),
    (en.gopher_repetition, lines("Alpha beta gamma.", "", "Delta.", "", "Alpha beta gamma.", "", "Delta."),
     "max_dup_para_char_ratio", 17 / 46, "max", {"min_dup_line_chars": 7}),
    # (buy, cheap) occurs 3 times: 3 * 8 characters of 42 word characters
    (en.gopher_repetition, "buy cheap pills buy cheap pills buy cheap pills now", "max_top_ngram_char_ratio", 24 / 42, "max",
     {"pairs": [2]}),
    # the second "one two three four five" repeats the first: 19 of 41 word characters
    (en.gopher_repetition, "one two three four five one two three four five six", "max_dup_ngram_char_ratio", 19 / 41,
     "max", {"pairs": [5]}),
    # 1 of 4 lines ends with terminal punctuation
    (en.fineweb, lines("A line that ends well.", "A heading", "Another heading here", "No end"), "min_line_punct_ratio",
     1 / 4, "min"),
    # 2 of 4 lines have at most 30 characters
    (en.fineweb, lines("Short line.", "Also short.", "This line is clearly longer than thirty characters.",
                       "And so is this one, by quite a long way."), "max_short_line_ratio", 2 / 4, "max"),
    # 3 newlines over 10 words
    (en.fineweb, lines("One two three.", "Four five.", "Six seven eight.", "Nine ten."), "max_newline_word_ratio", 3 / 10, "max"),
]

ZH_CASES = [
    (zh.length, "今天 天气很好。", "min_chars", 7, "min"),
    (zh.length, "今天天气很好。", "max_chars", 7, "max"),
    # 今天是 2024 年 10 月 1 日 。: 14 characters, 6 Han, 7 digits, 1 punctuation
    (zh.characters, "今天是2024年10月1日。", "min_han_ratio", 6 / 14, "min"),
    (zh.characters, "今天是2024年10月1日。", "max_digit_ratio", 7 / 14, "max"),
    (zh.characters, "今天是2024年10月1日。", "min_punct_ratio", 1 / 14, "min"),
    (zh.characters, "你好，世界！", "max_punct_ratio", 2 / 6, "max"),
    (zh.repetition, "我真的好好好好好开心。", "max_char_run", 5, "max"),
    (zh.repetition, lines("床前明月光，", "疑是地上霜。", "床前明月光，", "低头思故乡。"), "max_dup_line_ratio", 1 / 4, "max"),
    (zh.repetition, lines("床前明月光，", "疑是地上霜。", "床前明月光，", "举头望明月，低头思故乡。"), "max_dup_line_char_ratio",
     6 / 30, "max"),
    # 哈哈 appears 3 times (overlapping) in 哈哈哈哈 + 你好: 3 * 2 of 6 characters
    (zh.repetition, "哈哈哈哈你好", "max_top_ngram_char_ratio", 1.0, "max", {"pairs": [2]}),
    # 明月几时有 repeats once: 5 of 15 characters
    (zh.repetition, "明月几时有把酒问青天明月几时有", "max_dup_ngram_char_ratio", 5 / 15, "max", {"pairs": [5]}),
    # 免费 领取 优惠券 加微信 = 10 of 12 characters
    (zh.boilerplate, "免费领取优惠券，加微信。", "max_keyword_char_ratio", 10 / 12, "max",
     {"keywords": ["免费", "领取", "优惠", "优惠券", "加微信"]}),
    (zh.lines, lines("天气很好。", "我们去公园", "看花", "然后回家了！"), "min_line_punct_ratio", 2 / 4, "min"),
    (zh.lines, lines("天气很好。", "我们去公园散步吧。", "看花", "然后回家了！"), "max_short_line_ratio", 2 / 4, "max",
     {"short_line_chars": 5}),
]

CODE_TEXT = "def add(a, b):\n    return a + b\n"   # 32 characters, 3 lines (the last empty), 16 letters
CODE_CASES = [
    (generic.length, CODE_TEXT, "min_chars", 32, "min"),
    (generic.length, CODE_TEXT, "max_chars", 32, "max"),
    (generic.code, CODE_TEXT, "max_line_chars", 16, "max"),
    (generic.code, CODE_TEXT, "max_mean_line_chars", 32 / 3, "max"),
    (generic.code, CODE_TEXT, "min_alpha_ratio", 16 / 32, "min"),
]

# 33 letters of 40 non-space characters; lines of 21, 6 and 21 characters, the third repeating the first
DOCS_TEXT = "Note: see the manual.\nx = 1;\nNote: see the manual.\n"
DOCS_CASES = [
    (generic.docs, DOCS_TEXT, "min_alpha_ratio", 33 / 40, "min"),
    (generic.docs, DOCS_TEXT, "max_line_chars", 21, "max"),
    (generic.docs, DOCS_TEXT, "max_dup_line_char_ratio", 21 / 48, "max", {"min_dup_line_chars": 21}),
]

VIEWS = {en.gopher_quality: en.EnglishText, en.gopher_repetition: en.EnglishText, en.fineweb: en.EnglishText,
         en.c4: en.EnglishText, zh.length: zh.ChineseText, zh.characters: zh.ChineseText, zh.repetition: zh.ChineseText,
         zh.boilerplate: zh.ChineseText, zh.lines: zh.ChineseText, generic.length: generic.PlainText,
         generic.code: generic.PlainText, generic.docs: generic.PlainText}


def _params(key: str, limit: float, extra: dict) -> dict:
    extra = dict(extra)
    if "pairs" in extra:
        return {key: [[n, limit] for n in extra.pop("pairs")]}
    if key == "min_stop_words":
        extra["stop_words"] = ["the"]
    return {key: limit, **extra}


def _case_id(case) -> str:
    return f"{case[0].__name__}.{case[2]}"


@pytest.mark.parametrize("case", EN_CASES + ZH_CASES + CODE_CASES + DOCS_CASES, ids=_case_id)
def test_rule_on_both_sides_of_its_threshold(case):
    rule, text, key, measured, kind, *extra = case
    extra = extra[0] if extra else {}
    view = VIEWS[rule](text)
    inside = measured - EPS if kind == "min" else measured + EPS
    outside = measured + EPS if kind == "min" else measured - EPS
    assert rule(view, _params(key, inside, extra)) is None, f"{key}={inside} should keep the document"
    assert rule(VIEWS[rule](text), _params(key, outside, extra)) == f"{rule.__name__}.{key}"


def test_boilerplate_keywords_match_longest_first(monkeypatch):
    """优惠券 is matched whole, not as 优惠 + 券; the pattern is built here, not taken from the cache."""
    monkeypatch.setattr(zh, "_KEYWORD_CACHE", {})
    view = zh.ChineseText("优惠券优惠券，好")              # 7 characters (punctuation excluded): 6 in keywords
    keywords = ["优惠", "优惠券", "券"]
    assert zh.boilerplate(view, {"max_keyword_char_ratio": 6 / 7, "keywords": keywords}) is None
    assert zh.boilerplate(view, {"max_keyword_char_ratio": 5 / 7, "keywords": keywords}) == \
        "boilerplate.max_keyword_char_ratio"
    assert zh._keyword_re(("优惠", "优惠券")).findall("优惠券") == ["优惠券"]
    assert zh._keyword_re(("a.b",)).findall("axb a.b") == ["a.b"]          # keywords are literal text


@pytest.mark.parametrize("pair,ok", [([1, 0], True), ([1, 1], True), ([2.0, 0.5], True), ([0, 0.5], False),
                                     ([2.5, 0.5], False), ([2, -0.1], False), ([2, 1.01], False), ([2], False),
                                     (2, False), ([2, 0.5, 1], False)])
def test_ngram_limit_pairs_are_checked(pair, ok):
    from data_pipeline.filters.english import GopherRepetitionParams

    for name in ("max_top_ngram_char_ratio", "max_dup_ngram_char_ratio"):
        if ok:
            GopherRepetitionParams(**{name: [pair]})
        else:
            with pytest.raises(ValueError, match=f"{name}: each item is \\[n >= 1, fraction in \\[0, 1\\]\\]"):
                GopherRepetitionParams(**{name: [[3, 0.2], pair]})


def test_docs_repeats_shorter_than_min_dup_line_chars_do_not_count():
    view = generic.PlainText(DOCS_TEXT)
    assert generic.docs(view, {"max_dup_line_char_ratio": 21 / 48, "min_dup_line_chars": 21}) is None  # at the limit
    assert generic.docs(view, {"max_dup_line_char_ratio": 0.0, "min_dup_line_chars": 21}) == "docs.max_dup_line_char_ratio"
    assert generic.docs(view, {"max_dup_line_char_ratio": 0.0, "min_dup_line_chars": 22}) is None
    assert generic.docs(view, {"max_dup_line_char_ratio": 0.0}) == "docs.max_dup_line_char_ratio"   # no minimum
    assert generic.docs(generic.PlainText(""), {"min_alpha_ratio": 0.5, "max_line_chars": 0}) == "docs.min_alpha_ratio"
    assert generic.docs(generic.PlainText(""), {"max_line_chars": 0}) is None


@pytest.mark.parametrize("needed,expected", [(2, None), (3, "gopher_quality.min_stop_words")])
def test_stop_words_count(needed, expected):
    doc = en.EnglishText(FOX)   # "the" twice
    assert en.gopher_quality(doc, {"min_stop_words": needed, "stop_words": ["the", "and"]}) == expected


@pytest.mark.parametrize("text,key,expected", [
    ("Lorem ipsum dolor sit amet, consectetur adipiscing elit.", "lorem_ipsum", "c4.lorem_ipsum"),
    ("A sentence about ipsum and lorem, in that order.", "lorem_ipsum", None),
    ("Call it like this: f(x) { return x; }", "curly_braces", "c4.curly_braces"),
    ("Call it like this: f(x) (returns x).", "curly_braces", None),
])
def test_c4_document_rules(text, key, expected):
    assert en.c4(en.EnglishText(text), {key: True}) == expected


def test_c4_min_sentences():
    text = "One. Two! Three? Four."
    assert en.c4(en.EnglishText(text), {"min_sentences": 4}) is None
    assert en.c4(en.EnglishText(text), {"min_sentences": 5}) == "c4.min_sentences"


def test_fineweb_duplicate_line_chars():
    text = lines("The first line is here.", "The first line is here.", "A different closing line.")
    assert en.fineweb(en.EnglishText(text), {"max_dup_line_char_ratio": 0.4}) is None   # 23 of 71 chars
    assert en.fineweb(en.EnglishText(text), {"max_dup_line_char_ratio": 0.3}) == "fineweb.max_dup_line_char_ratio"


# --- default rule sets (configs/data/rules/*.yaml) on realistic documents -----------------------

EN_GOOD = lines(
    "The river rises in the hills to the north of the town and runs south through farmland for about forty miles.",
    "In the spring the water is high and fast, and the old stone bridge near the mill has been closed twice in ten years.",
    "Farmers along the banks grow wheat, barley and potatoes, and many of them keep a few cows for milk and cheese.",
    "The town council has asked the county to pay for a new bridge, but the money has not yet been found.",
    "Visitors come in the summer to walk the towpath, to fish for trout, and to eat at the small inn beside the weir.",
)
ZH_GOOD = lines(
    "这条河发源于城北的山里，向南流经农田，全长大约六十公里。",
    "春天水位很高，水流也急，磨坊旁边那座老石桥在过去十年里关闭过两次。",
    "沿岸的农民种植小麦、大麦和土豆，很多人家还养几头牛，用来产奶和做奶酪。",
    "镇议会已经请求县里出钱修一座新桥，但是这笔钱至今还没有着落。",
    "夏天游客来这里沿着纤道散步、钓鳟鱼，在水坝旁边的小旅馆吃饭。",
)


@pytest.fixture(scope="module")
def rule_sets():
    return build_rule_sets(load_config([]).rules)


def test_default_rules_keep_good_documents(rule_sets):
    assert rule_sets["en"](EN_GOOD) is None
    assert rule_sets["zh"](ZH_GOOD) is None
    assert rule_sets["code"]("import os\n\n\ndef main():\n    print(os.getcwd())\n\n\nmain()\n") is None


@pytest.mark.parametrize("lang,text,reason", [
    ("en", "\n".join(["buy cheap pills online best price"] * 12), "gopher_quality.min_stop_words"),
    ("en", "Click here. Win money now.", "gopher_quality.min_words"),
    ("en", EN_GOOD + "\nLorem ipsum dolor sit amet, consectetur adipiscing elit.", "c4.lorem_ipsum"),
    ("en", "\n".join([EN_GOOD] * 3), "gopher_repetition.max_dup_line_ratio"),
    ("zh", "\n".join(["免费领取 优惠 低价 促销 加微信"] * 8), "characters.min_punct_ratio"),
    ("zh", "点击免费领取优惠券，加微信客服，免费注册下载，优惠促销低价包邮！" * 2 + "\n" + ZH_GOOD,
     "boilerplate.max_keyword_char_ratio"),
    ("zh", "好。", "length.min_chars"),
    ("zh", ZH_GOOD + "\n" + "啊" * 20 + "。", "repetition.max_char_run"),
    ("code", "var a=1;" * 200, "code.max_line_chars"),
])
def test_default_rules_reject_bad_documents(rule_sets, lang, text, reason):
    assert rule_sets[lang](text) == reason


def test_line_cleaning_removes_boilerplate_and_keeps_content():
    cfg = load_config([]).rules
    en_cleaner = LineCleaner(cfg["en"]["clean_lines"])
    noisy = lines("Home | About | Contact | Privacy Policy", "This website uses cookies to improve your experience.",
                  EN_GOOD, "Copyright 2024 All rights reserved.", "Share on Facebook Share on Twitter",
                  "Please enable JavaScript to view the comments.")
    assert en_cleaner(noisy) == EN_GOOD
    assert sum(en_cleaner.removed.values()) == 5
    zh_cleaner = LineCleaner(cfg["zh"]["clean_lines"])
    noisy_zh = lines("首页 | 关于我们 | 联系我们 | 隐私政策", ZH_GOOD, "扫描二维码关注我们的微信公众号",
                     "本站部分内容来自网络，如有侵权请联系删除", "上一篇 下一篇 返回顶部")
    assert zh_cleaner(noisy_zh) == ZH_GOOD
    assert dict(zh_cleaner.removed) == {"navigation": 2, "social": 1, "takedown": 1}


def test_line_cleaning_c4_options():
    cleaner = LineCleaner({"max_word_chars": 10, "drop_no_terminal_punct": True, "terminal_punct": ["."]})
    assert cleaner(lines("A heading", "A sentence.", "A " + "x" * 11 + " word.")) == "A sentence."
    assert dict(cleaner.removed) == {"no_terminal_punct": 1, "max_word_chars": 1}


def test_normalize():
    cfg = NormalizeConfig()
    raw = "Cafe\u0301\r\nline\x07 two\u200b  has   gaps   \r\n\n\n\n\nend\t\n    indented  code"
    # whitespace inside lines is kept by default (aligned code, TSV tabs, Markdown hard breaks)
    assert normalize_text(raw, cfg) == "Café\nline two  has   gaps   \n\n\nend\t\n    indented  code"
    assert normalize_text(raw, NormalizeConfig(collapse_spaces=True)) == \
        "Café\nline two has gaps   \n\n\nend\t\n    indented code"
    assert normalize_text(raw, NormalizeConfig(nfc=False, strip_control=False, strip_invisible=False,
                                               line_endings=False, max_blank_lines=-1)) == raw


@pytest.mark.parametrize("text,lang", [
    (EN_GOOD, "en"), (ZH_GOOD, "zh"),
    ("#include <stdio.h>\nint main(void) {\n    printf(\"hi\");\n    return 0;\n}\n", "code"),
    ("これは日本語の文章です。ひらがなとカタカナが入っています。", "ja"),
    ("Это русский текст, в нём нет латинских букв.", "other"),
    ("GNOME 文档项目\n浏览服务器或网络共享中的文件，就像是查看本地计算机一样。", "zh"),
])
def test_script_language(text, lang):
    assert annotate_language(text, LangConfig())[0] == lang


def test_fasttext_language_id(tmp_path):
    import random

    from data_pipeline.quality import train_fasttext

    rng = random.Random(0)
    vocab = {"en": EN_GOOD.lower().replace(",", "").replace(".", "").split(), "zh": list(ZH_GOOD.replace("\n", "")),
             "fr": "le fleuve prend sa source dans les collines au nord de la ville et coule vers le sud".split()}
    rows = [f"__label__{lang} {' '.join(rng.choices(words, k=12))}" for _ in range(200) for lang, words in vocab.items()]
    train = tmp_path / "lid.txt"
    train.write_text("\n".join(rows) + "\n", encoding="utf-8")
    model_path = tmp_path / "lid.bin"
    train_fasttext(train, epoch=10, lr=0.5, dim=16, bucket=100_000, wordNgrams=2, thread=1, seed=0).save_model(str(model_path))
    cfg = LangConfig(model="fasttext", fasttext_model=str(model_path))
    detector = build_detector(cfg)
    lang, facts = annotate_language("le fleuve prend sa source dans les collines au nord de la ville", cfg, detector)
    assert (lang, facts["lang_by"]) == ("fr", "fasttext")
    assert annotate_language(EN_GOOD, cfg, detector)[0] == "en"
    assert annotate_language(ZH_GOOD, cfg, detector)[0] == "zh"


def test_keep_original_text_recoverable():
    from data_pipeline.readers import Document
    from data_pipeline.steps import Normalize

    cfg = load_config(["normalize.keep_original=true"])
    doc = Document(id="1", text="Cafe\u0301  au lait\r\n", source="t")
    reason, size = Normalize(cfg)(doc, len(doc.text.encode()))
    assert reason is None and doc.text == "Café  au lait" and size == len("Café  au lait".encode())
    assert doc.annotations["original_text"] == "Cafe\u0301  au lait\r\n"


def test_reader_field_mapping(tmp_path):
    from data_pipeline.config import ReaderConfig
    from data_pipeline.readers import BadRecord, read_unit

    path = tmp_path / "crawl.jsonl"
    path.write_text('{"url": "http://a", "content": "hello", "site": "a.com", "lang": "en"}\n'
                    '{"url": "http://b", "text": "no content field"}\n', encoding="utf-8")
    cfg = ReaderConfig(id_field="url", text_field="content", source_field="site", metadata_fields=["lang", "url"])
    doc, bad = list(read_unit(path, cfg))
    assert (doc.id, doc.text, doc.source, doc.annotations) == ("http://a", "hello", "a.com",
                                                               {"lang": "en", "url": "http://a"})
    assert isinstance(bad, BadRecord) and bad.location == "line 2" and bad.reason.startswith("missing_text")


def test_rule_family_by_language_and_content_type():
    """Documentation is judged by the docs rules whatever its language, except code; a language without
    rules of its own falls back to `other`."""
    from data_pipeline.filters import RULE_FAMILIES, rule_family

    assert {"en", "zh", "code", "docs", "other"} <= set(RULE_FAMILIES)
    assert [rule_family("en", "docs"), rule_family("zh", "docs"), rule_family("fr", "docs")] == ["docs"] * 3
    assert [rule_family("code", "docs"), rule_family("code", None)] == ["code", "code"]
    assert [rule_family("en"), rule_family("zh", "prose"), rule_family("en", "code")] == ["en", "zh", "en"]
    assert [rule_family("fr"), rule_family("ja", "prose"), rule_family("", None)] == ["other"] * 3
