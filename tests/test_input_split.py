"""Input files cut into work units (`reader.unit_mb`, data_pipeline/input_split.py): the parts cover
each file exactly, at line starts, with the records before each counted; and a run cut into many
units writes the same records, ids, quarantine rows and counts as the run of whole files, with 1
and 2 workers."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_pipeline.__main__ import execute, load_config
from data_pipeline.config import ReaderConfig
from data_pipeline.input_split import FilePart, plan_parts
from data_pipeline.readers import read_unit
from stack_common.errors import ConfigError
from stack_common.sample_corpus import load_clean
from stack_common.shards import read_manifest, records_sha256

STAGES = "stages=[normalize,annotate,clean_lines,filter]"


def _texts() -> list[str]:
    return [doc["text"] for lang in ("en", "zh") for doc in load_clean(lang)]


def write_inputs(root: Path) -> None:
    """plain.jsonl (bad lines, blank lines, ids on some records, no newline at the end), many-groups
    parquet, many-batches arrow, and a gzipped JSONL (read whole)."""
    texts = _texts()
    root.mkdir(parents=True)
    lines = []
    for i, text in enumerate(texts[:240]):
        lines.append(json.dumps({"text": text, **({"id": f"j{i}"} if i % 3 == 0 else {})}))
        if i % 37 == 5:
            lines.append("{not json")
        if i % 53 == 7:
            lines.append("")
    (root / "plain.jsonl").write_text("\n".join(lines))                 # no newline after the last line
    table = pa.Table.from_pylist([{"text": t, "id": None if i % 2 else f"p{i}"} for i, t in enumerate(texts[240:480])])
    pq.write_table(table, root / "many.parquet", row_group_size=16)
    batches = pa.Table.from_pylist([{"text": t} for t in texts[480:600]]).to_batches(max_chunksize=10)
    with pa.ipc.new_file(root / "batches.arrow", batches[0].schema) as writer:
        for batch in batches:
            writer.write_batch(batch)
    import gzip
    with gzip.open(root / "packed.jsonl.gz", "wt") as fh:
        fh.write("\n".join(json.dumps({"text": t}) for t in texts[600:650]) + "\n")


def run(root: Path, out: Path, unit_mb: float, workers: int) -> dict:
    return execute(load_config([f"input=[{root}/*]", f"output={out}", STAGES, f"workers={workers}",
                                f"reader.unit_mb={unit_mb}"]))


def units_of(out: Path) -> int:
    return len({entry["name"].split("-")[0] for entry in read_manifest(out / "stages" / "00_normalize" / "excluded")["files"]}
               | {entry["name"].split("-")[0] for entry in read_manifest(out / "final")["files"]})


def test_a_run_cut_into_parts_writes_what_the_run_of_whole_files_writes(tmp_path):
    write_inputs(tmp_path / "in")
    whole = run(tmp_path / "in", tmp_path / "whole", 0, 1)
    assert whole["quarantined"] >= 6 and whole["docs_excluded"] > 0
    for workers in (1, 2):
        out = tmp_path / f"parts-{workers}"
        cut = run(tmp_path / "in", out, 0.02, workers)       # about 20 kB a unit
        for key in ("records_read", "docs_read", "docs_kept", "docs_excluded", "quarantined", "quarantine_reasons",
                    "bytes_read", "bytes_kept", "kept_langs"):
            assert cut[key] == whole[key], key
        for sub in ("final", "quarantine", "stages/03_filter/excluded", "stages/01_annotate/excluded"):
            assert records_sha256(out / sub) == records_sha256(tmp_path / "whole" / sub), sub
        assert units_of(out) > 12 > units_of(tmp_path / "whole") == 4


def test_jsonl_parts_start_at_line_starts_and_count_the_lines_before(tmp_path):
    write_inputs(tmp_path / "in")
    path = tmp_path / "in" / "plain.jsonl"
    data = path.read_bytes()
    parts = plan_parts(path, 0.01)
    assert len(parts) > 10 and parts[0].start == 0 and parts[-1].stop == len(data)
    for a, b in zip(parts, parts[1:]):
        assert a.stop == b.start and data[b.start - 1:b.start] == b"\n"
        assert b.start - a.start >= 0.01 * 2**20                     # at least unit_mb, up to the next line
        assert b.before == data[:b.start].count(b"\n")
    whole = list(read_unit(path, ReaderConfig(), "plain.jsonl"))
    pieces = [r for part in parts for r in read_unit(path, ReaderConfig(), "plain.jsonl", part)]
    assert [(type(r).__name__, getattr(r, "id", None), getattr(r, "location", None)) for r in pieces] == \
        [(type(r).__name__, getattr(r, "id", None), getattr(r, "location", None)) for r in whole]


def test_jsonl_cuts_at_the_end_of_the_file_long_lines_and_crlf(tmp_path):
    """A line longer than a unit is a part of its own; a cut that falls at the file's last newline
    starts no empty part; CRLF lines keep their \\r (the whole read keeps it too)."""
    path = tmp_path / "edge.jsonl"
    long_text = "x" * 3000
    lines = [json.dumps({"text": long_text if i % 4 == 0 else f"doc {i}"}) for i in range(13)]
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode())
    unit_mb = 2000 / 2**20                                  # under one long line; the last line is long
    parts = plan_parts(path, unit_mb)
    assert parts[-1].stop == path.stat().st_size and parts[-1].start < parts[-1].stop
    assert [p.before for p in parts] == [0, 1, 5, 9]         # each long line ends a part
    whole = [(r.id, r.text) for r in read_unit(path, ReaderConfig(), "edge.jsonl")]
    assert [(r.id, r.text) for p in parts for r in read_unit(path, ReaderConfig(), "edge.jsonl", p)] == whole
    assert whole[4] == ("edge.jsonl:5", long_text)


def test_parquet_and_arrow_parts_are_runs_of_row_groups_and_batches(tmp_path):
    write_inputs(tmp_path / "in")
    for name, pieces in (("many.parquet", 15), ("batches.arrow", 12)):
        path = tmp_path / "in" / name
        parts = plan_parts(path, 0.02)
        assert 1 < len(parts) < pieces and parts[0] == FilePart(0, parts[0].stop, 0) and parts[-1].stop == pieces
        assert all(a.stop == b.start and b.before > a.before for a, b in zip(parts, parts[1:]))
        whole = [(r.id, r.text) for r in read_unit(path, ReaderConfig(), name)]
        assert [(r.id, r.text) for p in parts for r in read_unit(path, ReaderConfig(), name, p)] == whole


def test_files_that_cannot_be_cut_stay_whole(tmp_path):
    write_inputs(tmp_path / "in")
    table = pa.Table.from_pylist([{"text": t} for t in _texts()[:50]])
    with pa.ipc.new_stream(tmp_path / "in" / "stream.arrow", table.schema) as writer:
        for batch in table.to_batches(max_chunksize=5):
            writer.write_batch(batch)
    (tmp_path / "in" / "broken.parquet").write_bytes(b"PAR1 not parquet")
    for name in ("packed.jsonl.gz", "stream.arrow", "broken.parquet"):
        assert plan_parts(tmp_path / "in" / name, 0.001) == [None], name
    assert plan_parts(tmp_path / "in" / "plain.jsonl", 0) == [None]
    assert plan_parts(tmp_path / "in" / "plain.jsonl", 1024) == [None]        # smaller than one unit
    assert plan_parts(f"file://{tmp_path}/in/plain.jsonl", 0.01) == [None]    # a URI: read whole


def test_a_run_started_before_unit_mb_resumes_with_whole_files(tmp_path):
    write_inputs(tmp_path / "in")
    reference = run(tmp_path / "in", tmp_path / "ref", 0, 1)
    out = tmp_path / "old"
    execute(load_config([f"input=[{tmp_path / 'in'}/*]", f"output={out}", "stages=[normalize,annotate]",
                         "workers=1", "reader.unit_mb=0"]))
    config = json.loads((out / "run_config.json").read_text())
    del config["reader"]["unit_mb"]                      # as the code before reader.unit_mb wrote it
    (out / "run_config.json").write_text(json.dumps(config))
    resumed = run(tmp_path / "in", out, 0.02, 1)         # appended stages; unit_mb given anew
    assert resumed["docs_kept"] == reference["docs_kept"]
    assert records_sha256(out / "final") == records_sha256(tmp_path / "ref" / "final")
    assert json.loads((out / "run_config.json").read_text())["reader"]["unit_mb"] == 0
    with pytest.raises(Exception, match="different settings"):   # a new run's unit_mb is decisive
        run(tmp_path / "in", out, 0.5, 1)


def test_a_negative_unit_size_is_refused():
    with pytest.raises(ConfigError, match="reader.unit_mb"):
        execute(load_config(["input=[x.jsonl]", "output=/tmp/never", "reader.unit_mb=-1"]))


def test_a_resume_runs_the_units_it_started_with(tmp_path, monkeypatch):
    """The plan is kept in the work directory: a resume whose planning would come out otherwise (a
    Parquet footer unreadable this time: read whole) still runs the first run's units, so no unit
    directory is reused for other content and nothing is lost."""
    from data_pipeline import runner

    write_inputs(tmp_path / "in")
    reference = run(tmp_path / "in", tmp_path / "ref", 0.02, 1)
    real_run_units = runner.run_units

    def two_units_then_die(fn, tasks, *args, **kwargs):
        real_run_units(fn, tasks[:2], *args, **kwargs)
        raise KeyboardInterrupt("killed after two units")

    monkeypatch.setattr(runner, "run_units", two_units_then_die)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "in", tmp_path / "out", 0.02, 1)
    monkeypatch.setattr(runner, "run_units", real_run_units)
    monkeypatch.setattr(runner, "plan_parts", lambda path, unit_mb: [None])
    resumed = run(tmp_path / "in", tmp_path / "out", 0.02, 1)
    assert resumed["docs_read"] == reference["docs_read"] and resumed["docs_kept"] == reference["docs_kept"]
    assert records_sha256(tmp_path / "out" / "final") == records_sha256(tmp_path / "ref" / "final")


@pytest.mark.slow
def test_parts_run_as_ray_tasks_with_the_local_result(ray_cluster, tmp_path):
    from stack_common.tasks import ray_placements

    write_inputs(tmp_path / "in")
    local = run(tmp_path / "in", tmp_path / "local", 0.02, 1)
    before = len(ray_placements())
    remote = execute(load_config([f"input=[{tmp_path / 'in'}/*]", f"output={tmp_path / 'ray'}", STAGES, "workers=4",
                                  "reader.unit_mb=0.02", *ray_cluster.overrides()]))
    units = [p for p in ray_placements()[before:] if p["desc"].startswith("normalize+")]
    assert len(units) == units_of(tmp_path / "ray") > 12
    assert remote["docs_kept"] == local["docs_kept"] and remote["quarantined"] == local["quarantined"]
    for sub in ("final", "quarantine", "stages/03_filter/excluded"):
        assert records_sha256(tmp_path / "ray" / sub) == records_sha256(tmp_path / "local" / sub), sub
