"""MinHash dedup on Chinese and mixed zh + Latin text: character shingles find what a reader calls the
same document (issue 13) and keep apart documents that only share a template.

The texts are written for this test (a manual page of a made-up tool, public domain). Ground truth
here is the benchmark's definition written again with plain Python sets: character 5-grams of the
whole text after whitespace runs become one space and spaces next to Han characters go.
"""
import json
import re

import pyarrow as pa
import pytest

from data_pipeline.dedup import GLOBAL_STAGES
from data_pipeline.dedup.minhash import MinHashConfig, jaccard_sorted, shingle_set
from data_pipeline.dedup.text import shingle_codes
from data_pipeline.schema import DOC_SCHEMA
from stack_common.errors import ConfigError
from stack_common.shards import read_table, write_table

PAGE = """pkgsync(1)                  用户命令                  pkgsync(1)

名称
    pkgsync - 在两台主机之间同步软件包缓存的工具

总览
    pkgsync [选项...] 源目录 目标主机:目录

描述
    pkgsync 把本地的软件包缓存复制到另一台主机上，只传输对方还没有的文件，
    所以第二次同步通常只需要几秒钟。它通过 ssh 连接远程主机，不需要在对方
    运行任何守护进程。同步之前会先比较两边文件的大小和校验和，校验和不一致的
    文件会被重新传输；传输中断后再次运行同一条命令即可继续。

选项
    -n, --dry-run        只列出将要传输的文件，不做任何修改。
    -d, --delete         删除目标目录中源目录已经没有的软件包。
    -j, --jobs=N         同时传输 N 个文件，默认为 4。
    -e, --ssh=COMMAND    指定连接远程主机时使用的命令，例如 "ssh -p 2222"。
    -q, --quiet          只在出错时输出信息。

示例
    pkgsync -n /var/cache/apt/archives mirror.example.org:/srv/cache
    pkgsync -d -j 8 /var/cache/apt/archives mirror.example.org:/srv/cache

退出状态
    成功时返回 0；参数错误返回 2；网络或远程主机错误返回 3。
"""

# The same page as another site serves it: re-wrapped, half-width punctuation, a changed default,
# a reworded sentence, an option renamed and an example changed (about 10 % of the text edited).
COPY = """pkgsync(1) 用户命令 pkgsync(1)

名称
    pkgsync - 在两台主机之间同步软件包缓存的工具

总览
    pkgsync [选项...] 源目录 目标主机:目录

描述
    pkgsync 把本地的软件包缓存复制到另一台主机上,只传输对方还没有的文件,所以第二次同步
    通常只需要几秒钟。它通过 ssh 连接远程主机,不需要在远端运行任何服务。同步之前会先比较
    两边文件的大小和校验和,校验和不一致的文件会被重新传输;传输中断后再次运行同一条命令即可继续。

选项
    -n, --dry-run        只列出将要传输的文件,不做修改。
    -d, --delete         删除目标目录中源目录已经没有的软件包。
    -j, --jobs=N         同时传输 N 个文件,默认为 2。
    -e, --rsh=CMD        指定连接远程主机时使用的命令,例如 "ssh -p 22"。
    -q, --quiet          只在出错时输出信息。

示例
    pkgsync -n /var/cache/apt/archives backup.example.org:/srv/cache
    pkgsync -d -j 8 /var/cache/apt/archives mirror.example.org:/srv/cache

退出状态
    成功时返回 0;参数错误返回 2;网络或远程主机错误返回 3。
"""

# A sibling page of the same manual, as generated manuals have them: the same layout, headings,
# option table, examples and exit codes; the name and what the tool does are different.
OTHER = PAGE.replace("pkgsync", "pkgpull").replace("在两台主机之间同步软件包缓存的工具", "从镜像下载缺少的软件包").replace(
    """    pkgpull 把本地的软件包缓存复制到另一台主机上，只传输对方还没有的文件，
    所以第二次同步通常只需要几秒钟。它通过 ssh 连接远程主机，不需要在对方
    运行任何守护进程。同步之前会先比较两边文件的大小和校验和，校验和不一致的
    文件会被重新传输；传输中断后再次运行同一条命令即可继续。""",
    """    pkgpull 读取本机已安装软件包的列表，向镜像主机询问每个软件包的最新版本，
    然后只下载本地缓存里还没有的版本。下载的文件先写到临时目录，签名检查通过
    以后才移入缓存目录，因此即使下载被打断，缓存里也不会留下不完整的文件。""")

_HAN = "\u3400-\u4dbf\u4e00-\u9fff"


def truth_jaccard(a: str, b: str, n: int = 5) -> float:
    """The benchmark's ground truth, independent of data_pipeline (plus NFKC's one effect here: full
    -> half width, spelled out)."""
    def grams(text):
        text = text.translate(str.maketrans("，；：（）", ",;:()"))
        text = re.sub(rf"(?<=[{_HAN}]) | (?=[{_HAN}])", "", re.sub(r"\s+", " ", text).strip())
        return {text[i:i + n] for i in range(len(text) - n + 1)}
    ga, gb = grams(a), grams(b)
    return len(ga & gb) / len(ga | gb)


def _run_minhash(tmp_path, texts: dict, cfg: dict) -> tuple[dict, dict]:
    """(excluded id -> duplicate_of, stats) of the stage on these documents."""
    docs = [{"id": k, "text": v, "lang": "zh", "source": "test", "quality_score": None, "annotations": "{}"}
            for k, v in texts.items()]
    run = tmp_path / ("-".join(f"{k}={v}" for k, v in cfg.items()) or "default")
    write_table(run / "in", pa.Table.from_pylist(docs, schema=DOC_SCHEMA))
    stats = GLOBAL_STAGES["minhash_dedup"](run / "in", run / "out", cfg, 1, "local", None)
    excluded = read_table(run / "out/excluded").to_pylist()
    return {r["id"]: json.loads(r["annotations"])["duplicate_of"] for r in excluded}, stats


def test_edited_copy_of_a_chinese_manual_page_is_found_where_token_shingles_missed_it(tmp_path):
    truth = truth_jaccard(PAGE, COPY)
    tokens = jaccard_sorted(shingle_set(PAGE, MinHashConfig(shingle="tokens")),
                            shingle_set(COPY, MinHashConfig(shingle="tokens")))
    chars = jaccard_sorted(shingle_set(PAGE, MinHashConfig()), shingle_set(COPY, MinHashConfig()))
    assert truth >= 0.8 > tokens, (truth, tokens)          # a near duplicate the old shingles scored low
    assert chars == pytest.approx(truth, abs=0.03)
    texts = {"page": PAGE, "copy": COPY, "other": OTHER}
    assert _run_minhash(tmp_path, texts, {})[0] == {"copy": "page"}          # the longer page survives
    assert _run_minhash(tmp_path, texts, {"shingle": "tokens"})[0] == {}


def test_pages_sharing_only_a_template_are_not_merged(tmp_path):
    """Sibling pages are compared (64 bands of 2 rows make every pair here a candidate) and kept apart,
    while a true copy of one of them, in the same run, is removed."""
    other_copy = OTHER.replace("默认为 4", "默认为 6")
    assert 0.4 < truth_jaccard(PAGE, OTHER) < 0.8 and truth_jaccard(OTHER, other_copy) >= 0.8
    texts = {"page": PAGE, "other": OTHER, "other2": other_copy}
    excluded, stats = _run_minhash(tmp_path, texts, {"bands": 64, "rows": 2})
    assert stats["candidate_pairs"] == 3 and stats["verified_pairs"] == 1
    assert excluded == {"other2": "other"}                  # equal length and quality: smaller id survives
    assert _run_minhash(tmp_path, texts, {})[0] == excluded


def test_shingles_ignore_wrapping_width_and_case_but_keep_punctuation():
    rewrapped = "PKGSYNC 把本地的软件包缓存复制到另一台\n主机上，只传输对方还没有的文件"
    assert shingle_codes(rewrapped).tobytes() == shingle_codes(
        "pkgsync 把本地的软件包缓存复制到另一台主机上,  只传输对方还没有的文件").tobytes()
    assert shingle_codes("a  b\tc").tobytes().decode("utf-32-le") == "a b c"
    assert shingle_codes("用 ls -l 列出").tobytes().decode("utf-32-le") == "用ls -l列出"
    assert shingle_codes("停止。然后").tobytes() != shingle_codes("停止然后").tobytes()
    with_punct = shingle_set("选项：-n、-d 和 -j。", MinHashConfig())
    without = shingle_set("选项 -n -d 和 -j", MinHashConfig())
    assert jaccard_sorted(with_punct, without) < 0.5


def test_unknown_shingle_kind_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="dedup.minhash.shingle: 'words'"):
        _run_minhash(tmp_path, {"a": PAGE}, {"shingle": "words"})
