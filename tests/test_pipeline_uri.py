"""A run's input given as URIs (pyarrow.fs; file:// here, s3:// against a local S3 server in
test_pipeline_s3.py): the same documents, ids, stats and final/ records as the same run on
local paths; bad URIs named in the error; an output URI refused; a rerun resumes."""
from __future__ import annotations

import glob
import gzip
import functools
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_pipeline import runner
from data_pipeline.__main__ import execute, load_config
from data_pipeline.config import ReaderConfig
from data_pipeline.readers import BadRecord, expand_inputs, input_id_names, read_unit
from stack_common.errors import ConfigError, UserError
from stack_common.sample_corpus import load_clean
from stack_common.shards import read_table, records_sha256

STAGES = "stages=[normalize,annotate,clean_lines,filter,exact_dedup]"
DUPLICATES = 20      # documents of a.jsonl repeated verbatim in b.parquet
BAD_LINES = 3        # lines of a.jsonl that are not JSON


@functools.cache
def _texts() -> list[str]:
    return [doc["text"] for lang in ("en", "zh") for doc in load_clean(lang)]


def _docs(first: int, count: int, with_ids: bool) -> list[dict]:
    docs = [{"text": text} for text in _texts()[first:first + count]]
    for i, doc in enumerate(docs):
        if with_ids and i % 2:
            doc["id"] = f"doc-{first + i}"
        if i % 10 == 0:
            doc["text"] = "too short"           # excluded by the filter stage
    return docs


def write_inputs(root: Path) -> int:
    """raw/a/{a.jsonl, c.jsonl.gz}, raw/b/b.parquet, and a hidden file a glob must skip; returns the
    number of documents (records that are JSON objects with a text)."""
    (root / "raw" / "a").mkdir(parents=True)
    (root / "raw" / "b").mkdir()
    a, c, b = _docs(0, 150, False), _docs(150, 80, True), _docs(230, 100, True)
    b += [dict(doc) for doc in a[1:DUPLICATES * 2:2]]   # every one long enough to pass the filter
    lines = [json.dumps(d) for d in a]
    for k in range(BAD_LINES):
        lines.insert(7 * (k + 1), "{not json")
    (root / "raw" / "a" / "a.jsonl").write_text("\n".join(lines) + "\n")
    with gzip.open(root / "raw" / "a" / "c.jsonl.gz", "wt") as fh:
        fh.write("\n".join(json.dumps(d) for d in c) + "\n")
    pq.write_table(pa.Table.from_pylist([{"id": d.get("id"), "text": d["text"]} for d in b]),
                   root / "raw" / "b" / "b.parquet")
    (root / "raw" / "a" / ".hidden.jsonl").write_text(json.dumps({"text": "never read"}) + "\n")
    return len(a) + len(b) + len(c)


def run(inputs: list[str], out: Path) -> dict:
    return execute(load_config([f"input=[{','.join(inputs)}]", f"output={out}", STAGES, "workers=1"]))


def excluded_reasons(stats: dict) -> dict:
    return {s["stage"]: s["excluded"] for s in stats["stages"]}


def test_uri_inputs_give_the_same_run_as_local_paths(tmp_path):
    docs = write_inputs(tmp_path)
    raw = tmp_path / "raw"
    local = run([f"{raw}/a/*.jsonl*", f"{raw}/b"], tmp_path / "local")
    remote = run([f"file://{raw}/a/*.jsonl*", f"file://{raw}/b"], tmp_path / "remote")

    assert local["docs_read"] == docs and local["quarantined"] == BAD_LINES
    assert excluded_reasons(local)["exact_dedup"] == {"exact_duplicate": DUPLICATES}
    assert local["docs_kept"] == docs - sum(map(sum, (s.values() for s in excluded_reasons(local).values())))
    for key in ("records_read", "docs_read", "docs_kept", "docs_excluded", "quarantined", "quarantine_reasons",
                "bytes_read", "bytes_kept", "kept_langs"):
        assert remote[key] == local[key], key
    assert excluded_reasons(remote) == excluded_reasons(local)
    assert records_sha256(tmp_path / "remote" / "final") == records_sha256(tmp_path / "local" / "final")
    # ids without an id field are <path under the inputs' common folder>:<line or row>: the same for a
    # file:// URI as for its local path
    ids = read_table(tmp_path / "remote" / "final", columns=["id"])["id"].to_pylist()
    assert ids == read_table(tmp_path / "local" / "final", columns=["id"])["id"].to_pylist()
    assert {"a/a.jsonl:2", "a/c.jsonl.gz:3", "doc-151", "b/b.parquet:3", "doc-231"} <= set(ids)
    config = json.loads((tmp_path / "remote" / "run_config.json").read_text())
    assert config["input_files"] == [f"file://{raw}/a/a.jsonl", f"file://{raw}/a/c.jsonl.gz",
                                     f"file://{raw}/b/b.parquet"]
    bad = read_table(tmp_path / "remote" / "quarantine", columns=["file", "reason"]).to_pylist()
    assert {row["file"] for row in bad} == {f"file://{raw}/a/a.jsonl"}
    assert all(row["reason"].startswith("bad_json") for row in bad)


@pytest.mark.parametrize("pattern", ["raw/**/*.jsonl*", "raw/**", "raw/*/?.*", "raw/[ab]/*.parquet", "raw/a/.*",
                                     "raw/a", "raw", "raw/*"])
def test_uri_globs_expand_like_local_globs(tmp_path, pattern):
    write_inputs(tmp_path)
    (tmp_path / "raw" / "a" / "notes.txt").write_text("not an input format\n")
    local = expand_inputs([str(tmp_path / pattern)])
    assert [f"file://{p}" for p in local] == expand_inputs([f"file://{tmp_path}/{pattern}"])
    expected = sorted(glob.glob(str(tmp_path / pattern), recursive=True))
    if not any(Path(p).is_dir() for p in expected):   # files only: the plain glob, independently
        assert [str(p) for p in local] == expected
    uris = expand_inputs([f"file://{tmp_path}/{pattern}"])
    assert input_id_names(uris) == input_id_names(local)


def test_a_uri_shard_directory_is_read_through_its_manifest(tmp_path):
    write_inputs(tmp_path)
    run([f"{tmp_path}/raw/a/a.jsonl"], tmp_path / "first")
    final = f"file://{tmp_path}/first/final"
    shards = expand_inputs([final])
    assert shards == [f"{final}/{Path(p).name}" for p in expand_inputs([str(tmp_path / "first" / "final")])]
    texts = [r.text for r in read_unit(shards[0], ReaderConfig())]
    assert texts == read_table(tmp_path / "first" / "final", columns=["text"])["text"].to_pylist()


def test_missing_and_unmatched_uris_are_named(tmp_path):
    write_inputs(tmp_path)
    for uri, message in [(f"file://{tmp_path}/raw/missing.jsonl", "does not exist"),
                         (f"file://{tmp_path}/raw/*.parquet", "matches no file"),
                         (f"file://{tmp_path}/nowhere/*/*.jsonl", "matches no file"),
                         ("nosuchfs://bucket/raw/*.jsonl", "cannot be opened")]:
        with pytest.raises(UserError, match=message) as err:
            run([uri], tmp_path / "out")
        assert uri in str(err.value)
    assert not (tmp_path / "out" / "run_config.json").exists()


def test_an_output_uri_is_refused_with_what_to_do(tmp_path):
    write_inputs(tmp_path)
    with pytest.raises(ConfigError) as err:
        run([f"file://{tmp_path}/raw/a/a.jsonl"], f"file://{tmp_path}/out")
    message = str(err.value)
    assert f"file://{tmp_path}/out" in message and "flock" in message and "s3fs" in message
    assert "copy final/" in message and not (tmp_path / "out").exists()


def test_unreadable_uri_records_are_quarantined_with_the_uri(tmp_path):
    write_inputs(tmp_path)
    data = (tmp_path / "raw" / "a" / "c.jsonl.gz").read_bytes()
    (tmp_path / "cut.jsonl.gz").write_bytes(data[: len(data) // 2])
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 this is not parquet")
    cut = list(read_unit(f"file://{tmp_path}/cut.jsonl.gz", ReaderConfig()))
    local_cut = list(read_unit(tmp_path / "cut.jsonl.gz", ReaderConfig()))
    assert [type(r) for r in cut] == [type(r) for r in local_cut] and isinstance(cut[-1], BadRecord)
    assert 0 < len(cut) - 1 < 80 and cut[-1].file == f"file://{tmp_path}/cut.jsonl.gz"
    assert cut[-1].reason.startswith("broken_stream") and cut[-1].location == local_cut[-1].location
    (bad,) = read_unit(f"file://{tmp_path}/bad.parquet", ReaderConfig())
    assert bad.file == f"file://{tmp_path}/bad.parquet" and bad.reason.startswith("unreadable_file")


def test_a_rerun_over_uri_inputs_resumes_its_finished_stages(tmp_path, monkeypatch):
    write_inputs(tmp_path)
    inputs = [f"file://{tmp_path}/raw/**/*.jsonl*", f"file://{tmp_path}/raw/b/b.parquet"]
    first = run(inputs, tmp_path / "out")
    config = (tmp_path / "out" / "run_config.json").read_bytes()
    final = records_sha256(tmp_path / "out" / "final")

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished segment was run again")

    monkeypatch.setattr(runner, "run_segment", must_not_run)
    second = run(inputs, tmp_path / "out")
    assert (tmp_path / "out" / "run_config.json").read_bytes() == config
    assert records_sha256(tmp_path / "out" / "final") == final
    assert {k: v for k, v in second.items() if k != "seconds"} == {k: v for k, v in first.items() if k != "seconds"}


def test_every_format_reads_the_same_through_a_uri(tmp_path):
    import zstandard

    docs = _docs(0, 40, True)
    lines = ("\n".join(json.dumps(d) for d in docs) + "\n").encode()
    (tmp_path / "d.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines))
    table = pa.Table.from_pylist([{"id": d.get("id"), "text": d["text"]} for d in docs])
    with pa.ipc.new_file(tmp_path / "f.arrow", table.schema) as writer:
        writer.write_table(table)
    with pa.ipc.new_stream(tmp_path / "s.arrow", table.schema) as writer:
        writer.write_table(table)
    for name in ("d.jsonl.zst", "f.arrow", "s.arrow"):
        local = list(read_unit(tmp_path / name, ReaderConfig(), "x"))
        remote = list(read_unit(f"file://{tmp_path}/{name}", ReaderConfig(), "x"))
        assert [d.text for d in remote] == [d["text"] for d in docs], name
        assert [(d.id, d.source) for d in remote] == [(d.id, d.source) for d in local], name
