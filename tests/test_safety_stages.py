"""The harmful, pii and decontaminate stages and the quality model's raw-sample negatives: exact
outcomes on real text (the bundled sample corpus), look-alikes that must stay, bad input that
is neither crashed on nor lost, and a pipeline run that reconciles and does not depend on the
worker count."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_pipeline.config import DecontaminateConfig, HarmfulConfig
from data_pipeline.decontaminate import Decontaminator, ngram_hashes
from data_pipeline.harmful import HarmfulLists
from data_pipeline.pii import PiiScrubber, id_cn_valid, luhn_valid
from stack_common.errors import ConfigError, UserError
from test_data_pipeline_run import raw_records, run, shard_digest

REPO = Path(__file__).resolve().parents[1]
ALL_PII = ["email", "phone", "id_cn", "ip", "card"]


def sample(lang: str) -> dict[str, str]:
    return {r["id"]: r["text"] for r in pq.read_table(REPO / "data" / "sample" / f"{lang}.parquet").to_pylist()}


def write_list(path: Path, *entries: str) -> str:
    path.write_text("# test list\n" + "\n".join(entries) + "\n", encoding="utf-8")
    return str(path)


# --- PII ---------------------------------------------------------------------------------------

PII_REPLACED = [
    ("联系人：张三，手机 13812345678，邮箱 zhang.san@example.com。", "联系人：张三，手机 <PHONE>，邮箱 <EMAIL>。"),
    ("Call +1 415-555-0100 or +44 20 7946 0958.", "Call <PHONE> or <PHONE>."),
    ("办公电话 (010) 62345678 转 123，传真 021-5432 1234", "办公电话 <PHONE> 转 123，传真 <PHONE>"),
    ("tel:+8613812345678 / 0086 138 1234 5678", "tel:<PHONE> / <PHONE>"),
    ("身份证号：11010519491231002X，另一个 44030419900307123x。", "身份证号：<ID_CN>，另一个 <ID_CN>。"),
    ("Visa 4111 1111 1111 1111, UnionPay 6222021234567890128, Amex 3782-822463-10005",
     "Visa <CARD>, UnionPay <CARD>, Amex <CARD>"),
    ("PING www.debian.org (130.89.148.77) from 2603:400a:ffff:bb8::801f:3e.", "PING www.debian.org (<IP>) from <IP>."),
    ("Written by Shaun McCance <shaunm@gnome.org>", "Written by Shaun McCance <<EMAIL>>"),
    ("UK +44 7911 123456, FR +33 1 23 45 67 89, JP +81 3-1234-5678, AU +61 2 9876 5432",
     "UK <PHONE>, FR <PHONE>, JP <PHONE>, AU <PHONE>"),
]

PII_KEPT = [
    "version 1.2.3.4, v1.2.3.4, 版本 2.0.1.3, release 10.0.0.1, 内核 2.6.22.16, 3.1.4.1",   # versions
    "1.3.2.1. 反馈缺陷\n参见 第\u00a01.3.2.3\u00a0节，(見 節\u00a012.2.2.4, “網路”)",   # headings, sections
    "OID 1.3.6.1.4.1.311, python 3.11.4, pi 3.14159265358979",
    "2024-01-15, 2024/01/15, 20240115, 2024-01-15T10:20:30Z, 12:30:45",   # dates and times
    "epoch 1700000000, ms 1700000000123, us 1700000000123456",           # timestamps
    "0xDEADBEEF 0x4111111111111111 uuid 123e4567-e89b-12d3-a456-426614174000",
    "INT_MAX 2147483647, LLONG_MAX 9223372036854775807",                 # code constants
    "ISBN 978-7-111-54742-6, 9787111547426, 0-306-40615-2",
    "std::vector, a::b, dead::beef, MAC 00:1A:2B:3C:4D:5E, f9:2a:c2:77:29:f9:5c:00",
    "127.0.0.1, 192.168.1.1, 10.0.0.254, ::1, fe80::1, 2001:db8::1, mDNS 224.0.0.251",   # no one's address
    "4111 1111 1111 1112 fails Luhn; 110105194912310021 fails the check digit; 110105194913310023 month 13",
    "git@ and @property and user@localhost",
    "Oracle Database 12.2.0.1, upgrade from 11.2.0.4 to 19.3.0.0, JDK 11.0.20.1, Unicode 15.1.0.0",
    "scored +100 200 300 points; +1 555 0100 is too short for North America",
]


@pytest.mark.parametrize("text,expected", PII_REPLACED)
def test_pii_replaced_by_typed_placeholders(text, expected):
    assert PiiScrubber(ALL_PII).scrub(text)[0] == expected


@pytest.mark.parametrize("text", PII_KEPT)
def test_pii_look_alikes_stay(text):
    assert PiiScrubber(ALL_PII).scrub(text) == (text, {})


def test_pii_checksums_and_counts():
    assert id_cn_valid("11010519491231002X") and not id_cn_valid("110105194912310021")
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")
    text, counts = PiiScrubber(ALL_PII).scrub(" ".join(t for t, _ in PII_REPLACED))
    assert counts == {"email": 2, "phone": 11, "id_cn": 2, "card": 3, "ip": 2}
    only_mail = PiiScrubber(["email"]).scrub(PII_REPLACED[0][0])
    assert only_mail == ("联系人：张三，手机 13812345678，邮箱 <EMAIL>。", {"email": 1})
    assert PiiScrubber(["ip"], keep_private_ip=False).scrub("at 192.168.1.1")[0] == "at <IP>"


def test_pii_real_documentation_keeps_its_section_numbers():
    """debian-handbook-zh numbers its sections 1.3.2.1. and refers to 第 1.3.2.3 节: no IP there;
    gnome-help pages credit their authors by e-mail: replaced."""
    zh = sample("zh")
    scrubber = PiiScrubber(ALL_PII)
    counts = {}
    for doc_id, text in zh.items():
        for kind, n in scrubber.scrub(text)[1].items():
            counts[kind] = counts.get(kind, 0) + n
    assert counts == {"email": 354}


# --- harmful lists -----------------------------------------------------------------------------

def test_harmful_terms_match_chinese_without_spaces_and_english_at_word_boundaries(tmp_path):
    cfg = HarmfulConfig(word_lists={"test": [write_list(tmp_path / "t.txt", "ass", "porn*", "赌博", "cat fight")]},
                        min_terms=1)
    lists = HarmfulLists(cfg)
    assert lists("The class passed the grass to the bass player.") == (None, [])
    assert lists("A CLASSIC case: ASS.") == ("harmful.list:test", ["ass"])
    assert lists("pornography and porn") == ("harmful.list:test", ["porn"])
    assert lists("a cat fighting") == (None, [])
    assert lists("网上赌博网站") == ("harmful.list:test", ["赌博"])
    assert lists("") == (None, [])


def test_harmful_starter_lists_on_real_text():
    """Not one document of the bundled corpus (poems, manuals, Shakespeare) is hit; the same
    text with two gambling terms added is, with the terms named."""
    from data_pipeline.__main__ import load_config

    lists = HarmfulLists(load_config([]).harmful)
    texts = {**sample("en"), **sample("zh"), **sample("code")}
    assert [doc_id for doc_id, text in texts.items() if lists(text)[0]] == []
    poem = texts["fortunes-zh/3301"]
    assert lists(poem + "\n网上赌场，百家乐，注册就送。")[0:2] == ("harmful.list:gambling", ["百家乐", "网上赌场"])
    assert lists(poem + "\n百家乐")[0] is None                              # one term: min_terms is 2
    assert lists(poem + " https://www.bet365.com/x 百家乐")[1] == ["bet365.com", "百家乐"]


def test_harmful_same_term_as_word_in_one_list_and_prefix_in_another(tmp_path):
    cfg = HarmfulConfig(word_lists={"adult": [write_list(tmp_path / "a.txt", "porn")],
                                    "zz": [write_list(tmp_path / "z.txt", "porn*")]}, min_terms=1)
    lists = HarmfulLists(cfg)
    assert lists("pornography site") == ("harmful.list:zz", ["porn"])
    assert lists("porn site") == ("harmful.list:adult", ["porn"])   # both hit; the first category wins the tie


def test_harmful_matching_folds_width_and_whitespace_and_lists_hold_traditional_chinese(tmp_path):
    from data_pipeline.__main__ import load_config

    lists = HarmfulLists(load_config([]).harmful)
    assert lists("ＰＯＲＮ and sex  \n videos") == ("harmful.list:porn", ["porn", "sex videos"])
    assert lists("網上賭場，百家樂，注册就送") == ("harmful.list:gambling", ["百家樂", "網上賭場"])
    own = HarmfulLists(HarmfulConfig(word_lists={"t": [write_list(tmp_path / "t.txt", "Ｃａｔ  Fight")]}, min_terms=1))
    assert own("a cat fight") == ("harmful.list:t", ["cat fight"])


def test_harmful_starter_hate_list_keeps_benign_text():
    from data_pipeline.__main__ import load_config

    lists = HarmfulLists(load_config([]).harmful)
    assert lists("He had to gas the car before the trip; the white power steering fluid leaked.") == (None, [])
    # descriptive terms still hit encyclopedic text (said in data_pipeline/README.md)
    assert lists("The Nazis called Jews subhuman and preached racial purity.")[0] == "harmful.list:hate"


def test_harmful_own_url_with_user_info_and_port(tmp_path):
    from data_pipeline.harmful import url_host

    assert url_host("https://user:pw@PornHub.com:8080/x") == "pornhub.com"
    assert url_host("cn.pornhub.com/v/1") == "cn.pornhub.com" and url_host("www.x.com:80") == "www.x.com"
    assert url_host("http://[::1/") == "" and url_host("") == ""
    cfg = HarmfulConfig(url_lists={"porn": [write_list(tmp_path / "d.txt", "pornhub.com")]})
    assert HarmfulLists(cfg)("about", url="https://user:pw@PornHub.com:8080/x") == ("harmful.url:porn", ["pornhub.com"])


def test_harmful_stage_needs_a_list_or_a_model(tmp_path):
    (tmp_path / "in.jsonl").write_text('{"id": "a", "text": "hello"}\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="harmful: no word_lists, url_lists or model"):
        run(f"{tmp_path}/in.jsonl", tmp_path / "out", "stages=[normalize,harmful]", "harmful.word_lists=null",
            "harmful.url_lists=null")


def test_harmful_domains(tmp_path):
    cfg = HarmfulConfig(url_lists={"gambling": [write_list(tmp_path / "d.txt", "casino.example", "www.bet.test")]},
                        min_terms=1)
    lists = HarmfulLists(cfg)
    assert lists("about us", url="https://m.casino.example/page?x=1") == ("harmful.url:gambling", ["casino.example"])
    assert lists("about us", url="https://notcasino.example/") == (None, [])
    assert lists("see http://bet.test/a") == ("harmful.list:gambling", ["bet.test"])


def test_harmful_stage_reads_the_documents_url_from_its_annotations():
    from data_pipeline.__main__ import load_config
    from data_pipeline.readers import Document
    from data_pipeline.steps import build_steps

    step, = build_steps(["harmful"], load_config(["harmful.url_field=url"]))
    page = Document("p", sample("en")["shakespeare/33#4"], "web", "en", annotations={"url": "https://cn.pornhub.com/v/1"})
    assert step(page, 0)[0] == "harmful.url:porn" and page.annotations["harmful_terms"] == ["pornhub.com"]
    other = Document("q", page.text, "web", "en", annotations={"url": "https://www.gutenberg.org/1"})
    assert step(other, 0)[0] is None and "harmful_terms" not in other.annotations
    assert step.stats()["excluded"] == {"harmful.url:porn": 1} and step.stats()["docs_scored"] == 0


def test_harmful_list_errors(tmp_path):
    with pytest.raises(UserError, match="missing.txt.*list file does not exist"):
        HarmfulLists(HarmfulConfig(word_lists={"x": [str(tmp_path / "missing.txt")]}))
    with pytest.raises(ConfigError, match="min_terms"):
        HarmfulConfig(min_terms=0)


# --- decontamination ---------------------------------------------------------------------------

POEM_ITEM = "下面这首词的作者是谁？“东南形胜，三吴都会，钱塘自古繁华。”"       # 14 Han characters of 柳永《望海潮》
LEAR_ITEM = "Who speaks: Time shall vnfold what plighted cunning hides, Who couers faults, at last with shame derides"


def eval_files(tmp_path: Path) -> dict[str, list[str]]:
    (tmp_path / "zh.jsonl").write_text(
        json.dumps({"prompt": POEM_ITEM, "answer": "柳永"}, ensure_ascii=False) + "\n\n"
        + json.dumps({"prompt": "一加一等于几？", "answer": 2}, ensure_ascii=False) + "\n", encoding="utf-8")
    pq.write_table(pa.table({"prompt": [LEAR_ITEM, "What is two plus two?"], "answer": ["Cordelia", "four"],
                             "choices": [["a", "b"], ["c", "d"]]}), tmp_path / "en.parquet")
    return {"poems": [str(tmp_path / "zh.jsonl")], "lear": [str(tmp_path / "en.parquet")]}


def test_decontaminate_words_for_english_and_characters_for_chinese(tmp_path):
    matcher = Decontaminator(DecontaminateConfig(eval_sets=eval_files(tmp_path)))
    en, zh = sample("en"), sample("zh")
    assert matcher.hits(zh["fortunes-zh/3301"]) == {"poems": 2}       # 14 characters: two 13-grams
    lear = next(t for t in en.values() if "plighted cunning hides" in t)
    assert matcher.hits(lear) == {"lear": 3}
    # spacing, case, width and punctuation do not hide a copy; 12 shared tokens are not a hit
    assert matcher.hits("东 南 形 胜 三 吴 都 会 ， 钱 塘 自 古 繁 华") == {"poems": 2}
    assert matcher.hits("TIME SHALL VNFOLD what plighted cunning hides; who COUERS faults -- at LAST with shame") \
        == {"lear": 2}
    assert matcher.hits("东南形胜，三吴都会，钱塘自古繁") == {"poems": 1}
    assert matcher.hits("东南形胜，三吴都会，钱塘自古") == {}
    hit = [doc_id for doc_id, text in {**en, **zh}.items() if matcher.hits(text)]
    assert sorted(hit) == sorted(["fortunes-zh/3301", next(k for k, t in en.items() if t == lear)])
    assert [(s["benchmark"], s["items"], s["short_fields"]) for s in matcher.describe()] == \
        [("lear", 2, 7), ("poems", 2, 3)]


def test_decontaminate_finds_a_copy_in_text_holding_the_private_use_separator(tmp_path):
    matcher = Decontaminator(DecontaminateConfig(eval_sets=eval_files(tmp_path)))
    icon = "\ue000 Homework. " + LEAR_ITEM + " \ue000\ue000"     # icon-font glyphs around the copy
    assert matcher.hits(icon) == {"lear": 5}                      # the item's 17 words: five 13-grams
    assert len(ngram_hashes(icon, 13)) == 6                       # "Homework" + 17 words; U+E000 is no token


GSM8K_ITEM = {"question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips "
                          "to her friends in May. How many clips did Natalia sell altogether in April and May?",
              "answer": "Natalia sold 48/2 = 24 clips in May. #### 72"}


def test_decontaminate_default_fields_read_question_and_a_named_field_no_item_has_is_an_error(tmp_path):
    gsm8k = tmp_path / "gsm8k.jsonl"
    gsm8k.write_text(json.dumps(GSM8K_ITEM) + "\n" + json.dumps({"question": GSM8K_ITEM["question"][:60]}) + "\n",
                     encoding="utf-8")
    matcher = Decontaminator(DecontaminateConfig(eval_sets={"gsm8k": [str(gsm8k)]}))
    assert matcher.hits("Homework. " + GSM8K_ITEM["question"]) == {"gsm8k": 22}   # 34 words: 22 13-grams
    assert matcher.describe()[0]["missing_fields"] == {"answer": 1}
    with pytest.raises(UserError, match=r"gsm8k.jsonl, field 'decontaminate.eval_sets.gsm8k': no item has the "
                                        r"field\(s\) \['prompt'\]"):
        Decontaminator(DecontaminateConfig(eval_sets={"gsm8k": [str(gsm8k)]}, fields=["prompt", "answer"]))
    (tmp_path / "none.jsonl").write_text('{"text": "a b c d e f g h i j k l m n"}\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"none.jsonl.*no item has the field\(s\) \['prompt', 'question'"):
        Decontaminator(DecontaminateConfig(eval_sets={"x": [str(tmp_path / "none.jsonl")]}))


def test_decontaminate_short_fields_are_matched_whole_down_to_min_ngram(tmp_path):
    (tmp_path / "mmlu.jsonl").write_text(json.dumps({"question": "Which planet has the largest number of known moons?",
                                                     "choices": ["Saturn", "Jupiter"], "answer": 0}) + "\n",
                                         encoding="utf-8")
    evals = {"mmlu": [str(tmp_path / "mmlu.jsonl")]}
    matcher = Decontaminator(DecontaminateConfig(eval_sets=evals))            # 9 tokens: one 9-gram
    assert matcher.hits("Quiz: which planet has the largest number of known moons? Saturn.") == {"mmlu": 1}
    assert matcher.hits("which planet has the largest number of known") == {}
    assert matcher.describe()[0] | {"ngrams": 0} == {"benchmark": "mmlu", "items": 1, "ngrams": 0, "short_fields": 3,
                                                     "fallback_sizes": [9], "missing_fields": {}}
    with pytest.raises(UserError, match="no item has a field of 10 or more tokens"):
        Decontaminator(DecontaminateConfig(eval_sets=evals, min_ngram=10))
    with pytest.raises(ConfigError, match="decontaminate.min_ngram"):
        DecontaminateConfig(min_ngram=14)


def test_decontaminate_eval_sets_given_as_a_plain_path_is_a_config_error(tmp_path):
    from data_pipeline.__main__ import load_config

    with pytest.raises(ConfigError, match="decontaminate.eval_sets: a mapping name -> files"):
        load_config([f"decontaminate.eval_sets={tmp_path}/eval.jsonl"])


def test_decontaminate_bad_input(tmp_path):
    matcher = Decontaminator(DecontaminateConfig(eval_sets=eval_files(tmp_path)))
    assert matcher.hits("") == {} and matcher.hits("🙂" * 50) == {}
    huge = "தமிழ் எழுத்து " * 150_000 + "东南形胜，三吴都会，钱塘自古繁华"          # 2.1 M characters, Tamil
    assert matcher.hits(huge) == {"poems": 2}
    assert len(ngram_hashes("a b c", 13)) == 0
    (tmp_path / "bad.jsonl").write_text('{"prompt": "fine text here"}\n{"prompt": oops}\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"bad.jsonl, record line 2: not JSON"):
        Decontaminator(DecontaminateConfig(eval_sets={"bad": [str(tmp_path / "bad.jsonl")]}))
    (tmp_path / "obj.jsonl").write_text('{"prompt": {"text": "x"}}\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"obj.jsonl, record line 1, field .prompt.: a dict is not text"):
        Decontaminator(DecontaminateConfig(eval_sets={"obj": [str(tmp_path / "obj.jsonl")]}))
    with pytest.raises(UserError, match="no item has a field of 8 or more tokens"):
        Decontaminator(DecontaminateConfig(eval_sets={"zh": eval_files(tmp_path)["poems"]}, fields=["answer"]))
    with pytest.raises(ConfigError, match="decontaminate.action"):
        DecontaminateConfig(action="drop")


# --- the stages in a pipeline run --------------------------------------------------------------

def pipeline_input(tmp_path: Path) -> Path:
    """Two JSONL files of real documents, some with harmful terms, personal data or an evaluation
    item added, and bad input: empty text, a 2 MB document, unusual scripts, a broken line."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    en, zh = sample("en"), sample("zh")
    poem = zh["fortunes-zh/3301"]   # among the first 12 zh documents: a hit as written
    docs = [{"id": k, "text": t} for k, t in list(en.items())[:12] + list(zh.items())[:12]]
    docs += [
        {"id": "gambling", "text": zh["fortunes-zh/3352"] + "\n网上赌场，百家乐，时时彩，注册就送。"},
        {"id": "pii", "text": en["shakespeare/33#4"] + "\nMail zhang.san@example.com or call 13812345678."},
        {"id": "contaminated", "text": en["shakespeare/33#5"] + "\n\n" + poem.splitlines()[0]},
        {"id": "empty", "text": "  \n\n "},
        {"id": "huge", "text": ("A plain sentence of English prose about nothing at all, written to fill space. "
                                "It goes on. ") * 22_000 + "Reach me at big.doc@example.org please."},
        {"id": "scripts", "text": "𒀭𒂗𒆠 ꦲꦏ꧀ꦱꦫ ᠮᠣᠩᠭᠣᠯ " * 40},
    ]
    for i, part in enumerate((docs[::2], docs[1::2])):
        lines = [json.dumps(d, ensure_ascii=False) for d in part] + (['{"id": "broken", "text": '] if i else [])
        (tmp_path / f"in-{i}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return tmp_path


STAGES = "stages=[normalize,harmful,pii,decontaminate]"


@pytest.fixture(scope="module")
def safety_run(tmp_path_factory) -> tuple[Path, dict, Path]:
    tmp = tmp_path_factory.mktemp("safety")
    evals = eval_files(tmp)
    inputs = pipeline_input(tmp / "in")
    overrides = [STAGES, f"decontaminate.eval_sets={{poems: [{evals['poems'][0]}]}}"]
    stats = run(f"{inputs}/in-*.jsonl", tmp / "out1", *overrides, "workers=1")
    return tmp, stats, inputs, overrides


def excluded_reasons(out: Path) -> dict[str, str]:
    from stack_common.shards import read_table

    reasons = {}
    for stage_dir in sorted((out / "stages").iterdir()):
        table = read_table(stage_dir / "excluded", columns=["id", "reason"])
        reasons.update(zip(table.column("id").to_pylist(), table.column("reason").to_pylist()))
    return reasons


def test_pipeline_run_with_the_new_stages(safety_run):
    tmp, stats, _, _ = safety_run
    out = tmp / "out1"
    assert stats["reconciled"] and stats["quarantined"] == 1 and stats["docs_read"] == 30
    reasons = excluded_reasons(out)
    assert {k: v for k, v in reasons.items() if v.startswith(("harmful", "decontaminate"))} == \
        {"gambling": "harmful.list:gambling", "contaminated": "decontaminate:poems",
         "fortunes-zh/3301": "decontaminate:poems"}
    assert reasons["empty"] == "normalize.empty"
    from stack_common.shards import read_table

    removed = read_table(out / "stages" / "04_decontaminate" / "excluded", columns=["id", "annotations"]).to_pylist()
    assert {r["id"]: json.loads(r["annotations"])["contamination"] for r in removed} == \
        {"contaminated": {"poems": 2}, "fortunes-zh/3301": {"poems": 2}}
    by_stage = {s["stage"]: s for s in stats["stages"]}
    # fortunes-zh/249 (a mutt config quoted in a fortune) holds "Name Surname <username@example.dom>"
    assert by_stage["pii"]["replaced"] == {"email": 3, "phone": 1} and by_stage["pii"]["docs_changed"] == 3
    assert by_stage["decontaminate"]["hits"] == {"poems": 2}

    final = {r["id"]: r["text"] for r in read_table(out / "final", columns=["id", "text"]).to_pylist()}
    assert final["pii"].endswith("\nMail <EMAIL> or call <PHONE>.")
    annotations = {r["id"]: json.loads(r["annotations"]) for r in
                   read_table(out / "final", columns=["id", "annotations"]).to_pylist()}
    assert annotations["pii"]["pii_replaced"] == {"email": 1, "phone": 1}
    assert annotations["huge"]["pii_replaced"] == {"email": 1}
    assert sum("pii_replaced" in a for a in annotations.values()) == 3
    assert final["huge"].endswith("Reach me at <EMAIL> please.") and len(final["huge"]) > 2_000_000
    assert reasons["scripts"] == "other:lang.not_kept"   # cuneiform, Javanese, Mongolian: not lost, routed
    assert len(final) == 25 and stats["docs_kept"] == 25


def test_pipeline_new_stages_same_output_for_any_worker_count(safety_run):
    tmp, _, inputs, overrides = safety_run
    run(f"{inputs}/in-*.jsonl", tmp / "out2", *overrides, "workers=2")
    assert shard_digest(tmp / "out1") == shard_digest(tmp / "out2")


def test_pipeline_resumes_and_refuses_a_changed_eval_set(safety_run):
    tmp, stats, inputs, overrides = safety_run
    again = run(f"{inputs}/in-*.jsonl", tmp / "out1", *overrides, "workers=1")   # complete: nothing redone
    assert again["docs_kept"] == stats["docs_kept"] and again["reconciled"]
    eval_file = Path(overrides[1].split("[")[1].rstrip("]}"))
    original = eval_file.read_text(encoding="utf-8")
    try:
        eval_file.write_text(original + '{"prompt": "one more item of thirteen or more words to change the '
                             'evaluation set file"}\n', encoding="utf-8")
        with pytest.raises(UserError, match=r"decontaminate.eval_sets.poems\[0\] changed since this run started"):
            run(f"{inputs}/in-*.jsonl", tmp / "out1", *overrides)
    finally:   # the other tests of the module share the file
        eval_file.write_text(original, encoding="utf-8")


def test_stage_configs_reject_unknown_keys():
    from data_pipeline.__main__ import to_config

    for section in ("harmful", "pii", "decontaminate", "harmful_train"):
        with pytest.raises(ConfigError, match=f"{section}.bogus"):
            to_config({section: {"bogus": 1}})
    with pytest.raises(ConfigError, match="pii.kinds: unknown"):
        to_config({"pii": {"kinds": ["email", "passport"]}})


def test_decontaminate_mark_keeps_the_document_and_says_why(tmp_path):
    from data_pipeline.config import PipelineConfig
    from data_pipeline.readers import Document
    from data_pipeline.steps import build_steps

    cfg = PipelineConfig(decontaminate=DecontaminateConfig(eval_sets=eval_files(tmp_path), action="mark"))
    step, = build_steps(["decontaminate"], cfg)
    doc = Document("d", sample("zh")["fortunes-zh/3301"], "fortunes-zh")
    assert step(doc, 0)[0] is None and doc.annotations == {"contamination": {"poems": 2}}
    assert step(Document("e", "", "x"), 0)[0] is None
    assert step.stats()["hits"] == {"poems": 1} and step.stats()["docs_out"] == 2


@pytest.fixture(scope="module")
def spam_jsonl(raw_web, tmp_path_factory) -> tuple[Path, list[dict]]:
    """The raw-web layer's spam pages as a JSONL file: harmful text for harmful_train, negatives
    for quality_train."""
    spam = [r for r in raw_records(raw_web) if r["meta"]["kind"] == "spam"]
    path = tmp_path_factory.mktemp("spam") / "spam.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in spam), encoding="utf-8")
    return path, spam


@pytest.fixture(scope="module")
def harmful_model(raw_web, spam_jsonl, tmp_path_factory) -> tuple[Path, dict]:
    """One harmful model for the module: spam pages stand in for harmful text; the raw sample
    makes the report give the held-out AUC against it too."""
    from data_pipeline.__main__ import execute, load_config

    model = tmp_path_factory.mktemp("harmful") / "harmful.bin"
    safe, raw = f"{REPO}/data/sample/en.parquet,{REPO}/data/sample/zh.parquet", f"{raw_web}/raw-*.jsonl*"
    report = execute(load_config(["task=harmful_train", f"harmful_train.positive=[{spam_jsonl[0]}]",
                                  f"harmful_train.negative=[{safe}]", f"harmful_train.raw_sample=[{raw}]",
                                  "harmful_train.raw_sample_docs=400", f"harmful_train.output={model}"]))
    return model, report


def test_harmful_model_trained_like_the_quality_model(raw_web, spam_jsonl, harmful_model, tmp_path):
    """harmful_train reuses the quality trainer (train_negatives=rejects: the safe texts given)."""
    model, report = harmful_model
    spam = spam_jsonl[1]
    assert report["labels"] == ["__label__harmful", "__label__safe"] and report["auc"] > 0.9
    assert report["train_negatives"] == "rejects" and set(report["heldout_auc"]) == {"rejects", "raw_sample"}
    assert json.loads(Path(f"{model}.report.json").read_text())["heldout_auc"] == report["heldout_auc"]
    stats = run(f"{raw_web}/raw-*.jsonl*", tmp_path / "out", "stages=[normalize,harmful]", f"harmful.model={model}")
    harmful = next(s for s in stats["stages"] if s["stage"] == "harmful")
    # exactly the spam pages go: the English ones offer "casino bonus" and "free spins" (the
    # starter gambling list), the Chinese ones only the model recognises
    reasons = excluded_reasons(tmp_path / "out")
    assert stats["reconciled"] and {k for k, v in reasons.items() if v.startswith("harmful")} == {r["id"] for r in spam}
    assert {reasons[r["id"]] for r in spam if r["id"].startswith("spam/en/")} == {"harmful.list:gambling"}
    assert {reasons[r["id"]] for r in spam if r["id"].startswith("spam/zh/")} == {"harmful.model"}
    langs = next(s for s in stats["stages"] if s["stage"] == "annotate")["langs"]   # code is not scored
    assert harmful["docs_scored"] == langs["zh"] + langs["en"] - harmful["excluded"]["harmful.list:gambling"]


def test_quality_negatives_from_a_raw_sample_report_auc_both_ways(raw_web, spam_jsonl, tmp_path):
    """Trained on a raw sample as negatives; the report gives the held-out AUC against the
    rejects too (the other way round is harmful_model's report above: same trainer)."""
    from data_pipeline.__main__ import execute, load_config

    common = [f"quality_train.positive=[{REPO}/data/sample/en.parquet,{REPO}/data/sample/zh.parquet]",
              f"quality_train.negative=[{spam_jsonl[0]}]", f"quality_train.raw_sample=[{raw_web}/raw-*.jsonl*]",
              "quality_train.raw_sample_docs=400"]
    report = execute(load_config(["task=quality_train", *common, "quality_train.train_negatives=raw_sample",
                                  f"quality_train.output={tmp_path}/raw_sample.bin"]))
    assert report["train_negatives"] == "raw_sample" and set(report["heldout_auc"]) == {"rejects", "raw_sample"}
    saved = json.loads(Path(f"{tmp_path}/raw_sample.bin.report.json").read_text())
    assert saved["heldout_auc"] == report["heldout_auc"]
    assert report["train_negative"] + report["heldout_negative"] == 400
    with pytest.raises(UserError, match=r"quality_train needs raw_sample inputs \(train_negatives=raw_sample: a "
                                        r"random sample of `raw_sample`\)"):
        execute(load_config(["task=quality_train", *common[:2], "quality_train.train_negatives=raw_sample"]))
    with pytest.raises(UserError, match=r"harmful_train needs negative inputs \(train_negatives=rejects: the "
                                        r"`negative` files\)"):
        execute(load_config(["task=harmful_train", f"harmful_train.positive=[{spam_jsonl[0]}]"]))
