"""Compression of document shards (`shards.compression`): the same records, in the same order and
batches, whatever the codec; smaller files on text; the setting reaches every writer of a run."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_pipeline.__main__ import execute, load_config
from data_pipeline.schema import DOC_SCHEMA
from data_pipeline.top_fraction import apply_top_fraction
from stack_common.errors import ConfigError
from stack_common.shards import ShardCompression, iter_batches, read_manifest, read_table, records_sha256, \
    write_table

REPO = Path(__file__).resolve().parents[1]


def sample_docs() -> pa.Table:
    """The bundled real text (en and zh) as pipeline documents."""
    rows = []
    for lang in ("en", "zh"):
        for r in pq.read_table(REPO / "data/sample" / f"{lang}.parquet").to_pylist():
            rows.append({"id": r["id"], "text": r["text"], "lang": lang, "source": "sample",
                         "quality_score": (len(rows) % 97) / 97, "annotations": "{}"})
    return pa.Table.from_pylist(rows, schema=DOC_SCHEMA)


def shard_dirs(out: Path) -> dict[str, Path]:
    return {str(m.parent.relative_to(out)): m.parent for m in sorted(out.rglob("manifest.json"))}


def test_every_codec_writes_the_same_batches_and_text_shrinks(tmp_path):
    table = sample_docs()
    sizes, batches, files = {}, {}, {}
    for name, setting in {"none": ShardCompression("none"), "lz4": ShardCompression("lz4"),
                          "zstd": ShardCompression(), "zstd9": ShardCompression(zstd_level=9)}.items():
        written = write_table(tmp_path / name, table, target_bytes=1 << 20, compression=setting.codec())
        assert read_table(tmp_path / name).equals(table)
        batches[name] = [b.num_rows for b in iter_batches(tmp_path / name)]
        sizes[name] = sum(f.bytes for f in written)
        files[name] = len(written)
    # batches are sliced by their uncompressed size: the same for every codec; a file is closed at
    # target_bytes on disk, so compressed files hold more of them
    assert len({tuple(b) for b in batches.values()}) == 1 and len(batches["none"]) > 2
    assert files["none"] == 2 and files["zstd"] == 1
    assert sizes["zstd9"] < sizes["zstd"] < sizes["lz4"] < sizes["none"]
    assert sizes["zstd"] < 0.6 * sizes["none"]


@pytest.mark.parametrize("settings, problem", [
    ({"compression": "gzip"}, "shards.compression: one of zstd, lz4, none, got 'gzip'"),
    ({"zstd_level": 0}, "shards.zstd_level: 1 to 22, got 0"),
    ({"compression": "lz4", "zstd_level": 23}, "shards.zstd_level: 1 to 22, got 23"),
])
def test_bad_settings_name_the_field(settings, problem):
    with pytest.raises(ConfigError, match=problem):
        ShardCompression(**settings)
    overrides = [f"shards.{k}={v}" for k, v in settings.items()]
    with pytest.raises(ConfigError, match=problem):
        load_config(["input=x", "output=y", *overrides])


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """One input (real text with exact copies, one unreadable record) run with each setting
    through per-document stages and exact dedup."""
    root = tmp_path_factory.mktemp("compression")
    table = sample_docs()
    rows = table.to_pylist()
    rows += [{**r, "id": r["id"] + "-copy"} for r in rows[::5]]
    lines = [json.dumps(r, ensure_ascii=False) for r in rows] + ['{"id": "broken", "text": ']
    (root / "docs.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = {}
    for name, overrides in {"none": ["shards.compression=none"], "zstd": [],
                            "lz4": ["shards.compression=lz4"]}.items():
        out[name] = root / name
        execute(load_config([f"input={root}/docs.jsonl", f"output={out[name]}", "workers=1", "lang.model=script",
                             "stages=[normalize,annotate,clean_lines,filter,exact_dedup]", *overrides]))
    return out


def test_a_run_reads_back_the_same_records_with_any_codec(runs):
    dirs = {name: shard_dirs(out) for name, out in runs.items()}
    assert {"final", "quarantine", "stages/03_filter/kept", "stages/04_exact_dedup/kept",
            "stages/04_exact_dedup/excluded"} <= set(dirs["none"])
    assert dirs["zstd"].keys() == dirs["none"].keys() == dirs["lz4"].keys()
    for rel, none_dir in dirs["none"].items():
        expected = read_table(none_dir)
        for name in ("zstd", "lz4"):
            got = read_table(dirs[name][rel])
            assert got.schema.equals(expected.schema) and got.equals(expected), (name, rel)
    assert read_manifest(dirs["none"]["quarantine"])["rows"] == 1
    assert read_manifest(dirs["none"]["stages/04_exact_dedup/excluded"])["rows"] > 0
    counts = {name: {k: v for k, v in json.loads((out / "stats.json").read_text()).items() if k in
                     ("docs_read", "docs_kept", "docs_excluded", "bytes_kept", "quarantined", "reconciled")}
              for name, out in runs.items()}
    assert counts["zstd"] == counts["none"] == counts["lz4"] and counts["none"]["reconciled"]


def test_the_setting_reaches_per_document_and_dedup_writers(runs):
    def size(name, rel):
        return read_manifest(runs[name] / rel)["bytes"]
    for rel in ("stages/03_filter/kept", "stages/04_exact_dedup/kept", "stages/04_exact_dedup/excluded"):
        assert size("zstd", rel) < size("lz4", rel) < size("none", rel), rel
    text = json.loads((runs["none"] / "stats.json").read_text())["bytes_kept"]
    assert size("none", "final") > text > 2 * size("zstd", "final")


def test_top_fraction_rewrites_units_with_the_setting(tmp_path):
    table = sample_docs()
    kept = {}
    for name, setting in {"none": ShardCompression("none"), "zstd": ShardCompression()}.items():
        unit = tmp_path / name / "unit-0"
        write_table(unit / "kept", table, prefix="part", compression=setting.codec())
        write_table(unit / "excluded" / "quality", table.slice(0, 0).append_column(
            "stage", pa.array([], pa.string())).append_column("reason", pa.array([], pa.string())), prefix="part")
        write_table(unit / "quarantine", table.slice(0, 0), prefix="part")
        (unit / "stats.json").write_text(json.dumps({"stages": [{"stage": "quality", "docs_out": table.num_rows,
                                                                 "bytes_out": 0, "excluded": {}}]}))
        apply_top_fraction([unit], {"en": 0.5, "zh": 0.5}, compression=setting)
        kept[name] = unit / "kept"
    assert read_table(kept["zstd"]).equals(read_table(kept["none"]))
    assert 0 < read_table(kept["none"]).num_rows < table.num_rows
    assert read_manifest(kept["zstd"])["bytes"] < 0.6 * read_manifest(kept["none"])["bytes"]


def test_records_digest_ignores_codec_and_splits_but_not_content(tmp_path):
    table = sample_docs()
    write_table(tmp_path / "one", table, compression=None)
    write_table(tmp_path / "many", table, target_bytes=100_000, compression=ShardCompression(zstd_level=9).codec())
    assert len(read_manifest(tmp_path / "many")["files"]) > 3
    assert records_sha256(tmp_path / "many", block_rows=100) == records_sha256(tmp_path / "one", block_rows=100)
    assert records_sha256(tmp_path / "many") == records_sha256(tmp_path / "one")
    rows = table.to_pylist()
    rows[500]["text"] += " "
    write_table(tmp_path / "edited", pa.Table.from_pylist(rows, schema=DOC_SCHEMA), compression=None)
    write_table(tmp_path / "shorter", table.slice(0, table.num_rows - 1), compression=None)
    assert len({records_sha256(tmp_path / d) for d in ("one", "edited", "shorter")}) == 3
