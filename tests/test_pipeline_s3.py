"""Inputs on S3, against a real S3 API: moto's server on this machine (no network), reached through
pyarrow's S3 filesystem with the endpoint in the URI's query. The same run as on local paths (JSONL,
gzip and multi-frame zstd JSONL, Parquet, through globs), its final/ records written to S3 by the
shard writer; names with a space, %, # in them; a resume after an interrupted run, and a refused
resume after an object was rewritten; secrets kept out of what the run writes; missing buckets and
keys named."""
from __future__ import annotations

import gzip
import json
import logging
import os
import random
import socket
from pathlib import Path

import pyarrow as pa
import pytest

from data_pipeline import unit
from data_pipeline.__main__ import execute, load_config
from data_pipeline.readers import expand_inputs, input_id_names, read_unit
from data_pipeline.config import ReaderConfig
from stack_common.errors import UserError
from stack_common.shards import ArrowWriter, iter_batches, manifest_schema, read_arrow, read_manifest, read_table, \
    records_sha256, shard_paths, write_arrow, write_table
from test_pipeline_uri import BAD_LINES, DUPLICATES, STAGES, _docs, excluded_reasons, run, write_inputs

moto_server = pytest.importorskip("moto.server")
boto3 = pytest.importorskip("boto3")
zstandard = pytest.importorskip("zstandard")

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
ZST_DOCS = 60


@pytest.fixture(scope="module")
def s3():
    """(boto3 client, the query that points pyarrow at the server); credentials from the environment,
    as a user would give them. The server is stopped at the end of the module: its port refuses
    connections again."""
    saved = {k: os.environ.get(k) for k in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)   # a free port
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield boto3.client("s3", endpoint_url=f"http://{host}:{port}"), f"endpoint_override={host}:{port}&scheme=http"
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((host, port), timeout=5).close()


@pytest.fixture
def bucket(s3, request):
    client, query = s3
    name = request.node.name.lower().replace("_", "-")[:50].strip("-")
    client.create_bucket(Bucket=name)
    return name


def upload(client, bucket: str, root: Path, prefix: str = "") -> None:
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        client.put_object(Bucket=bucket, Key=prefix + path.relative_to(root).as_posix(), Body=path.read_bytes())


def write_zst(root: Path) -> int:
    """raw/a/d.jsonl.zst: two zstd frames one after the other (as `cat a.zst b.zst` makes); returns
    its number of documents."""
    lines = [json.dumps(d) + "\n" for d in _docs(330, ZST_DOCS, True)]
    frames = [zstandard.ZstdCompressor().compress("".join(half).encode()) for half in (lines[:25], lines[25:])]
    (root / "raw" / "a" / "d.jsonl.zst").write_bytes(b"".join(frames))
    return len(lines)


def test_s3_inputs_give_the_same_run_as_local_paths_and_final_is_written_to_s3(s3, bucket, tmp_path):
    client, query = s3
    docs = write_inputs(tmp_path) + write_zst(tmp_path)
    upload(client, bucket, tmp_path / "raw", "raw/")
    raw = tmp_path / "raw"
    local = run([f"{raw}/a/*.jsonl*", f"{raw}/b"], tmp_path / "local")
    remote = run([f"'s3://{bucket}/raw/a/*.jsonl*?{query}'", f"'s3://{bucket}/raw/b?{query}'"], tmp_path / "remote")

    assert local["docs_read"] == docs and local["quarantined"] == BAD_LINES
    assert excluded_reasons(local)["exact_dedup"] == {"exact_duplicate": DUPLICATES}
    for key in ("records_read", "docs_read", "docs_kept", "docs_excluded", "quarantined", "quarantine_reasons",
                "bytes_read", "bytes_kept", "kept_langs"):
        assert remote[key] == local[key], key
    assert excluded_reasons(remote) == excluded_reasons(local)
    assert records_sha256(tmp_path / "remote" / "final") == records_sha256(tmp_path / "local" / "final")
    assert records_sha256(tmp_path / "remote" / "quarantine") != records_sha256(tmp_path / "local" / "quarantine")
    bad = read_table(tmp_path / "remote" / "quarantine", columns=["file"]).to_pylist()
    assert {row["file"] for row in bad} == {f"s3://{bucket}/raw/a/a.jsonl"}      # no endpoint in the record
    config = json.loads((tmp_path / "remote" / "run_config.json").read_text())
    assert config["input_files"] == [f"s3://{bucket}/raw/a/a.jsonl", f"s3://{bucket}/raw/a/c.jsonl.gz",
                                     f"s3://{bucket}/raw/a/d.jsonl.zst", f"s3://{bucket}/raw/b/b.parquet"]
    zst = [(d.id, d.text) for d in read_unit(f"s3://{bucket}/raw/a/d.jsonl.zst?{query}", ReaderConfig(), "d")]
    assert len(zst) == ZST_DOCS and zst == [(d.id, d.text) for d in read_unit(raw / "a" / "d.jsonl.zst", ReaderConfig(), "d")]

    # final/ copied to S3 by the shard writer, in several shards: the same records
    final = tmp_path / "remote" / "final"
    with ArrowWriter(f"s3://{bucket}/out/final?{query}", manifest_schema(final), target_bytes=100_000) as writer:
        for batch in iter_batches(final):
            writer.write(batch)
    files = writer.files
    assert len(files) >= 3 and sum(f.rows for f in files) == local["docs_kept"] > 200
    assert records_sha256(f"s3://{bucket}/out/final?{query}") == records_sha256(tmp_path / "local" / "final")
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="out/")["Contents"]]
    assert sorted(k for k in keys if not k.endswith("/")) == \
        ["out/final/manifest.json", *(f"out/final/shard-{i:05d}.arrow" for i in range(len(files)))]


def test_the_shard_writer_writes_to_s3_as_to_a_local_folder(s3, bucket, tmp_path):
    """Shard names and temp names go after the path, the query stays on the URI; the same manifest
    (names, rows, bytes, sha256) as the local folder; an aborted writer leaves no object."""
    client, query = s3
    table = pa.table({"id": [f"d{i}" for i in range(30_000)], "n": pa.array(range(0, 90_000, 3), pa.int64())})
    write_table(tmp_path / "local", table, target_bytes=50_000, extra={"stage": "t"})
    write_table(f"s3://{bucket}/shards/?{query}", table, target_bytes=50_000, extra={"stage": "t"})
    remote = read_manifest(f"s3://{bucket}/shards?{query}")
    assert len(remote["files"]) >= 3 and remote == read_manifest(tmp_path / "local")
    paths = shard_paths(f"s3://{bucket}/shards?{query}", verify=True)
    assert paths[1] == f"s3://{bucket}/shards/shard-00001.arrow?{query}"
    assert read_table(f"s3://{bucket}/shards?{query}", columns=["n"]).column("n").to_pylist() == list(range(0, 90_000, 3))

    for name in ("one/t%231.arrow", "top.arrow"):             # one file: a '#' in its name; in the bucket's root
        write_arrow(f"s3://{bucket}/{name}?{query}", table)
        assert read_arrow(f"s3://{bucket}/{name}?{query}").equals(table)
    with pytest.raises(RuntimeError, match="stop"):
        with ArrowWriter(f"s3://{bucket}/failed?{query}", table.schema) as writer:
            writer.write(table)
            raise RuntimeError("stop")
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]}
    assert {"one/t#1.arrow", "top.arrow"} <= keys and not [k for k in keys if k.startswith("failed/") and k != "failed/"]
    with pytest.raises(UserError, match="no manifest.json") as err:
        read_manifest(f"s3://{bucket}/failed?{query}")
    assert f"s3://{bucket}/failed:" in str(err.value) and "endpoint_override" not in str(err.value)


def test_object_names_with_space_percent_and_hash_are_listed_read_and_named(s3, bucket, tmp_path):
    client, query = s3
    names = ["part 1.jsonl", "100% done.jsonl", "#2.jsonl", "plain.jsonl"]
    for k, name in enumerate(names):
        body = "".join(json.dumps({"text": f"document {k}.{i} " * 20}) + "\n" for i in range(3))
        client.put_object(Bucket=bucket, Key=f"in/{name}", Body=body.encode())
    files = expand_inputs([f"s3://{bucket}/in/*.jsonl?{query}"])
    assert len(files) == 4 and all(f.endswith(f"?{query}") for f in files)
    assert sorted(input_id_names(files)) == sorted(names)
    for f in files:
        assert [d.text for d in read_unit(f, ReaderConfig())][0].startswith("document ")
    single = expand_inputs([f"s3://{bucket}/in/part%201.jsonl?{query}"])      # one escaped name, no wildcard
    assert single == [f for f in files if "part%201" in f]
    assert [d.id for d in read_unit(single[0], ReaderConfig(), "part 1.jsonl")][:1] == ["part 1.jsonl:1"]


def test_a_gzip_object_is_read_in_few_requests(s3, bucket, caplog):
    """gzip asks for 8 KiB at a time: unbuffered, each read was one GET (597 for these 2.2 MB)."""
    client, query = s3
    rng = random.Random(0)
    lines = [json.dumps({"text": " ".join(str(rng.random()) for _ in range(50))}) + "\n" for _ in range(5000)]
    body = gzip.compress("".join(lines).encode(), mtime=0)
    assert 2_000_000 < len(body) < 3_000_000
    client.put_object(Bucket=bucket, Key="in/big.jsonl.gz", Body=body)
    caplog.set_level(logging.INFO, logger="werkzeug")
    docs = list(read_unit(f"s3://{bucket}/in/big.jsonl.gz?{query}", ReaderConfig()))
    assert [d.text for d in docs] == [json.loads(line)["text"] for line in lines]
    gets = [r for r in caplog.records if f"GET /{bucket}/in/big.jsonl.gz" in r.getMessage()]
    assert 1 <= len(gets) <= 4, len(gets)


def test_a_wildcard_question_mark_is_not_taken_for_a_query(s3, bucket):
    client, query = s3
    for name in ("p1.jsonl", "p2.jsonl", "p10.jsonl", "p[1].jsonl"):
        client.put_object(Bucket=bucket, Key=f"in/{name}", Body=b'{"text": "x"}\n')
    files = expand_inputs([f"s3://{bucket}/in/p?.jsonl?{query}"])
    assert [f.split("?")[0].rsplit("/", 1)[1] for f in files] == ["p1.jsonl", "p2.jsonl"]
    # brackets escaped in a wildcard part are the name's own, not a character class
    files = expand_inputs([f"s3://{bucket}/*/p%5B1%5D.jsonl?{query}"])
    assert [f.split("?")[0].rsplit("/", 1)[1] for f in files] == ["p%5B1%5D.jsonl"]


def test_a_run_over_s3_interrupted_mid_object_resumes_and_a_rewritten_object_is_refused(s3, bucket, tmp_path,
                                                                                          monkeypatch):
    client, query = s3
    write_inputs(tmp_path)
    write_zst(tmp_path)
    upload(client, bucket, tmp_path / "raw", "raw/")
    inputs = [f"'s3://{bucket}/raw/**/*.jsonl*?{query}'"]        # a.jsonl, c.jsonl.gz, d.jsonl.zst
    reference = run([f"{tmp_path}/raw/**/*.jsonl*"], tmp_path / "local")

    opened = []
    monkeypatch.setattr(unit, "read_unit", reading(opened, interrupt_in=2))
    with pytest.raises(KeyboardInterrupt):
        run(inputs, tmp_path / "out")
    assert len(opened) == 2 and len(list((tmp_path / "out" / "work").glob("*/unit-*/stats.json"))) == 1
    assert not (tmp_path / "out" / "stats.json").exists() and not list((tmp_path / "out").rglob("*.tmp"))

    opened.clear()
    monkeypatch.setattr(unit, "read_unit", reading(opened))
    resumed = run(inputs, tmp_path / "out")
    assert names(opened) == ["c.jsonl.gz", "d.jsonl.zst"]          # a.jsonl's unit was done: not read again
    for key in ("docs_read", "docs_kept", "docs_excluded", "quarantined", "bytes_kept"):
        assert resumed[key] == reference[key], key
    assert records_sha256(tmp_path / "out" / "final") == records_sha256(tmp_path / "local" / "final")
    assert not (tmp_path / "out" / "work").exists()

    client.put_object(Bucket=bucket, Key="raw/a/a.jsonl", Body=b'{"text": "a new version"}\n')
    with pytest.raises(UserError, match="input file changed since this run started") as err:
        run(inputs, tmp_path / "out")
    assert f"s3://{bucket}/raw/a/a.jsonl" in str(err.value) and "endpoint_override" not in str(err.value)


def reading(opened: list, interrupt_in: int = 0):
    """read_unit noting the objects it opens; Ctrl-C after 5 records of the `interrupt_in`-th one."""
    def read(path, *args):
        opened.append(path)
        for n, record in enumerate(read_unit(path, *args)):
            if len(opened) == interrupt_in and n == 5:
                raise KeyboardInterrupt
            yield record
    return read


def names(uris: list[str]) -> list[str]:
    return sorted(uri.split("?")[0].rsplit("/", 1)[1] for uri in uris)


def test_credentials_in_the_uri_stay_out_of_what_the_run_writes(s3, bucket, tmp_path):
    client, query = s3
    write_inputs(tmp_path)
    upload(client, bucket, tmp_path / "raw" / "b", "b/")
    secret = "Sup3rSecretKey"
    stats = run([f"'s3://testing:{secret}@{bucket}/b/*.parquet?{query}'"], tmp_path / "out")
    assert stats["docs_read"] > 0
    written = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert written and not [p for p in written if secret.encode() in p.read_bytes()]
    # a unit's stats (left in work/ by a killed run) and the errors name the input without the secret
    from data_pipeline.unit import process_unit
    (uri,) = expand_inputs([f"s3://testing:{secret}@{bucket}/b/*.parquet?{query}"])
    stats = process_unit(uri, str(tmp_path / "unit"), ["normalize"], load_config([]))
    assert stats["input"] == f"s3://{bucket}/b/b.parquet" and secret not in (tmp_path / "unit" / "stats.json").read_text()
    for missing in ("missing.jsonl", "*.arrow"):
        with pytest.raises(UserError) as err:
            run([f"'s3://testing:{secret}@{bucket}/b/{missing}?{query}'"], tmp_path / "failed")
        assert secret not in str(err.value) and "endpoint_override" not in str(err.value)


def test_missing_buckets_and_keys_are_named(s3, bucket, tmp_path):
    client, query = s3
    client.put_object(Bucket=bucket, Key="in/a.jsonl", Body=b'{"text": "x"}\n')
    for uri, message in [(f"s3://{bucket}/in/missing.jsonl?{query}", "does not exist"),
                         (f"s3://{bucket}/in/*.parquet?{query}", "matches no file"),
                         (f"s3://no-such-bucket-here/in/*.jsonl?{query}", "matches no file|cannot be")]:
        with pytest.raises(UserError, match=message) as err:
            run([f"'{uri}'"], tmp_path / "out")
        assert uri.split("?")[0] in str(err.value)
    assert not (tmp_path / "out" / "run_config.json").exists()


@pytest.mark.slow
def test_ray_workers_read_s3_inputs_themselves_with_the_local_result(s3, bucket, ray_cluster, tmp_path):
    """The units travel to the Ray workers as URIs (endpoint in the query, keys in user:password@,
    since the nodes' environment has none); each worker opens its files itself."""
    from stack_common.tasks import ray_placements

    client, query = s3
    write_inputs(tmp_path)
    upload(client, bucket, tmp_path / "raw", "raw/")
    inputs = [f"'s3://testing:testing@{bucket}/raw/a/*.jsonl*?{query}'", f"'s3://testing:testing@{bucket}/raw/b?{query}'"]
    local = run(inputs, tmp_path / "local")
    before = len(ray_placements())
    remote = execute(load_config([f"input=[{','.join(inputs)}]", f"output={tmp_path / 'ray'}", STAGES, "workers=4",
                                  *ray_cluster.overrides()]))
    placements = ray_placements()[before:]
    units = [p for p in placements if p["desc"].startswith("normalize+")]
    assert len(units) == 3 and any(p["desc"].startswith("exact_dedup") for p in placements)   # 3 input files
    for key in ("docs_read", "docs_kept", "quarantined", "bytes_kept"):
        assert remote[key] == local[key], key
    for sub in ("final", "quarantine", "stages/04_exact_dedup/excluded"):
        assert records_sha256(tmp_path / "ray" / sub) == records_sha256(tmp_path / "local" / sub), sub
