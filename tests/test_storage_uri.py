"""Shard IO through URIs (stack_common.storage, pyarrow.fs): file:// here; s3:// against a local S3
server in test_pipeline_s3.py."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

from stack_common.errors import UserError
from stack_common.shards import ArrowWriter, iter_file_batches, read_arrow, read_manifest, read_table, shard_paths, write_arrow, \
    write_table


def _table(n: int) -> pa.Table:
    return pa.table({"id": [f"d{i}" for i in range(n)], "n": np.arange(n, dtype=np.int64) * 7})


def test_a_uri_shard_directory_is_byte_identical_to_a_local_one(tmp_path):
    table = _table(40_000)
    write_table(tmp_path / "local", table, target_bytes=60_000, extra={"stage": "t"})
    write_table(f"file://{tmp_path}/remote", table, target_bytes=60_000, extra={"stage": "t"})
    local, remote = read_manifest(tmp_path / "local"), read_manifest(f"file://{tmp_path}/remote")
    assert len(local["files"]) >= 3 and remote == local          # same names, rows, sizes, sha256
    paths = shard_paths(f"file://{tmp_path}/remote", verify=True)
    assert paths[0] == f"file://{tmp_path}/remote/shard-00000.arrow"
    assert read_table(f"file://{tmp_path}/remote", columns=["n"]).column("n").to_pylist() == list(range(0, 280_000, 7))
    write_arrow(f"file://{tmp_path}/one.arrow", table)
    assert read_arrow(f"file://{tmp_path}/one.arrow").equals(table)
    assert (tmp_path / "one.arrow").read_bytes() == _local_file_bytes(tmp_path, table)


def _local_file_bytes(tmp_path, table) -> bytes:
    write_arrow(tmp_path / "local.arrow", table)
    return (tmp_path / "local.arrow").read_bytes()


def test_a_failed_uri_writer_leaves_no_file_and_no_manifest(tmp_path):
    with pytest.raises(RuntimeError, match="stop"):
        with ArrowWriter(f"file://{tmp_path}/out", _table(1).schema) as writer:
            writer.write(_table(500))
            raise RuntimeError("stop")
    assert list((tmp_path / "out").iterdir()) == []
    with pytest.raises(UserError, match="no manifest.json") as err:
        read_manifest(f"file://{tmp_path}/out")
    assert f"file://{tmp_path}/out" in str(err.value)


def test_a_truncated_uri_shard_is_named(tmp_path):
    write_table(f"file://{tmp_path}/out", _table(1000))
    shard = tmp_path / "out" / "shard-00000.arrow"
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(UserError, match="bytes, manifest says") as err:
        shard_paths(f"file://{tmp_path}/out")
    assert f"file://{tmp_path}/out/shard-00000.arrow" in str(err.value)


def test_reading_some_columns_decodes_only_those_and_names_a_missing_one(tmp_path):
    table = pa.table({"id": ["a", "b"], "text": ["x" * 1000, "y"], "lang": ["en", "zh"]})
    write_arrow(tmp_path / "one.arrow", table)
    batches = list(iter_file_batches(tmp_path / "one.arrow", ["lang", "id"]))
    assert [b.schema.names for b in batches] == [["lang", "id"]]
    assert pa.Table.from_batches(batches).to_pydict() == {"lang": ["en", "zh"], "id": ["a", "b"]}
    with pytest.raises(UserError, match="shard lacks column\\(s\\) score"):
        list(iter_file_batches(tmp_path / "one.arrow", ["id", "score"]))


def test_the_pipeline_refuses_a_uri_output_instead_of_writing_a_local_s3_folder(tmp_path):
    (tmp_path / "in.jsonl").write_text('{"id": "1", "text": "hello"}\n')
    result = subprocess.run([sys.executable, "-m", "data_pipeline", f"input={tmp_path / 'in.jsonl'}",
                             "output=s3://bucket/out", "stages=[normalize]"], cwd=tmp_path, capture_output=True,
                            text=True)
    assert result.returncode == 2, result.stderr
    assert "output: 's3://bucket/out': the output must be a local or mounted path" in result.stderr
    assert "s3fs" in result.stderr and "copy final/ afterwards" in result.stderr
    assert not (tmp_path / "s3:").exists()


def test_a_uri_query_stays_on_every_derived_uri_and_is_not_a_wildcard():
    from stack_common.storage import Place, public_uri, split_query

    assert split_query("s3://b/in/*.jsonl?endpoint_override=h:9000&scheme=http") == \
        ("s3://b/in/*.jsonl", "endpoint_override=h:9000&scheme=http")
    assert split_query("s3://b/in/part-?.jsonl") == ("s3://b/in/part-?.jsonl", "")   # '?' as a wildcard
    assert split_query("s3://b/a?b/c.jsonl") == ("s3://b/a?b/c.jsonl", "")
    assert public_uri("s3://key:secret@bucket/x%20y.jsonl?secret_key=s") == "s3://bucket/x%20y.jsonl"
    assert public_uri("hdfs://user@host:8020/data/a.jsonl") == "hdfs://host:8020/data/a.jsonl"
    place = Place.of("file:///tmp/some/dir?use_mmap=false")
    child = place.child("a b/c#1.arrow")
    assert child.path == "/tmp/some/dir/a b/c#1.arrow"
    assert child.uri == "file:///tmp/some/dir/a%20b/c%231.arrow?use_mmap=false"
    assert Place.of(child.uri).path == child.path
    tmp = child.tmp_sibling()
    assert tmp.uri.endswith(".tmp?use_mmap=false") and Place.of(tmp.uri).path == tmp.path
    assert tmp.uri.startswith("file:///tmp/some/dir/a%20b/.c%231.arrow.") and tmp.path.startswith("/tmp/some/dir/a b/.c#1")
    assert child.parent().uri == "file:///tmp/some/dir/a%20b?use_mmap=false" and child.parent().path == "/tmp/some/dir/a b"
    assert public_uri("/data/raw?/a b.jsonl") == "/data/raw?/a b.jsonl"              # a local path as it is


def test_bytes_through_a_uri_are_written_and_read_as_given_whatever_the_extension(tmp_path):
    """pyarrow guesses a codec from .zst / .gz names; a Place writes and reads the bytes it is given."""
    from stack_common.storage import Place

    for name in ("a.jsonl.zst", "b.jsonl.gz", "c.arrow"):
        place = Place.of(f"file://{tmp_path}/{name}")
        place.write_bytes(b"raw bytes, not compressed")          # through a .tmp name
        assert (tmp_path / name).read_bytes() == b"raw bytes, not compressed"
        assert place.read_bytes() == b"raw bytes, not compressed"
        with place.open_output() as sink:                           # under its own name
            sink.write(b"other bytes")
        assert (tmp_path / name).read_bytes() == place.read_bytes() == b"other bytes"
