"""Shared infrastructure: shard IO round trip, crash safety, user errors, sample corpus."""
import json
import subprocess
import sys
import textwrap
import time

import pyarrow as pa
import pytest

from stack_common.atomic import atomic_dir, atomic_write_json, read_json_file
from stack_common.config import Checks, to_dataclass
from stack_common.errors import ConfigError, UserError
from stack_common.shards import (ShardWriter, iter_batches, read_manifest, read_table, shard_paths,
                                 write_table)


def _table(n: int, start: int = 0) -> pa.Table:
    return pa.table({
        "id": [f"doc-{i}" for i in range(start, start + n)],
        "text": [("文本 text %d " % i) * (i % 17 + 1) for i in range(start, start + n)],
        "quality_score": pa.array([i / 7 for i in range(start, start + n)], pa.float32()),
    })


def test_shards_round_trip_exactly(tmp_path):
    table = _table(5000)
    files = write_table(tmp_path / "out", table, target_bytes=20_000, extra={"stage": "t"})
    assert len(files) > 3, "target size should split the table into several shards"
    manifest = read_manifest(tmp_path / "out")
    assert manifest["rows"] == 5000 == sum(f["rows"] for f in manifest["files"])
    assert manifest["extra"] == {"stage": "t"}
    assert [f.name for f in files] == sorted(p.name for p in (tmp_path / "out").glob("*.arrow"))
    back = read_table(tmp_path / "out")
    assert back.equals(table)
    assert sum(b.num_rows for b in iter_batches(tmp_path / "out", columns=["id"])) == 5000
    assert len(shard_paths(tmp_path / "out", verify=True)) == len(files)


def test_corrupted_shard_is_detected(tmp_path):
    write_table(tmp_path / "out", _table(100))
    shard = next((tmp_path / "out").glob("*.arrow"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(UserError, match="sha256"):
        shard_paths(tmp_path / "out", verify=True)


def test_directory_without_manifest_is_incomplete(tmp_path):
    writer = ShardWriter(tmp_path / "out", _table(1).schema, target_bytes=1000)
    writer.write(_table(500))  # several shards closed, no manifest yet
    with pytest.raises(UserError, match="incomplete"):
        read_manifest(tmp_path / "out")
    writer.abort()


def test_writer_killed_mid_shard_leaves_nothing_complete(tmp_path):
    out = tmp_path / "out"
    script = textwrap.dedent(f"""
        import pyarrow as pa, sys, time
        from stack_common.shards import ShardWriter
        schema = pa.schema([("id", pa.string()), ("text", pa.string())])
        w = ShardWriter({str(out)!r}, schema, target_bytes=1 << 40)
        for i in range(10**9):
            w.write(pa.table({{"id": [str(i)] * 1000, "text": ["x" * 100] * 1000}}, schema=schema))
            if i == 50:
                print("writing", flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    time.sleep(0.3)
    proc.kill()
    proc.wait()
    names = [p.name for p in out.iterdir()]
    assert names, "the writer should have started a file"
    assert all(n.startswith(".") and n.endswith(".tmp") for n in names), names
    assert not list(out.glob("*.arrow"))
    with pytest.raises(UserError, match="incomplete"):
        read_manifest(out)


def test_atomic_json_and_dir(tmp_path):
    atomic_write_json(tmp_path / "a.json", {"x": 1})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1}
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "d") as d:
            (d / "f").write_text("partial")
            raise RuntimeError("crash")
    assert not (tmp_path / "d").exists() and list(tmp_path.iterdir()) == [tmp_path / "a.json"]
    with atomic_dir(tmp_path / "d") as d:
        (d / "f").write_text("done")
    assert (tmp_path / "d" / "f").read_text() == "done"


def test_user_error_is_one_line_exit_2(tmp_path, python):
    proc = subprocess.run([python, "-m", "stack_common", "verify", str(tmp_path / "missing")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "does not exist" in lines[0] and "missing" in lines[0], proc.stderr


def test_config_validation_collects_problems():
    from dataclasses import dataclass

    @dataclass
    class Cfg:
        layers: int = 2
        name: str = "x"

    assert to_dataclass({"layers": 4}, Cfg).layers == 4
    with pytest.raises(ConfigError, match="layers"):
        to_dataclass({"layers": "many"}, Cfg, where="model")
    checks = Checks()
    checks.require(False, "tp must divide heads")
    checks.require(True, "fine")
    checks.require(False, "pp must divide layers")
    with pytest.raises(ConfigError) as err:
        checks.raise_if_any()
    assert err.value.one_line().splitlines() == ["config error: tp must divide heads",
                                                  "config error: pp must divide layers"]


def test_sample_corpus_is_deterministic(raw_web, tmp_path):
    from stack_common.sample_corpus import build_raw_web

    again = build_raw_web(tmp_path / "again")
    for path in again:
        assert path.read_bytes() == (raw_web / path.name).read_bytes()
    manifest = json.loads((raw_web / "raw_manifest.json").read_text())
    assert manifest["kinds"]["exact_dup"] > 0 and manifest["kinds"]["near_dup"] > 0
    assert manifest["malformed"] >= 5


def test_read_json_file_names_the_file_on_bad_input(tmp_path):
    good, broken, listed = tmp_path / "good.json", tmp_path / "broken.json", tmp_path / "list.json"
    good.write_text('{"vocab_size": 8000}')
    broken.write_text('{"vocab_size": 80')          # truncated mid-write
    listed.write_text("[1, 2]")
    assert read_json_file(good) == {"vocab_size": 8000}
    for path, reason in ((broken, "not readable JSON"), (listed, "not a JSON object"),
                         (tmp_path / "missing.json", "not readable JSON")):
        with pytest.raises(UserError, match=reason) as err:
            read_json_file(path)
        assert str(path) in str(err.value) and "\n" not in str(err.value)
