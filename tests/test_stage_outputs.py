"""`keep_stage_outputs=false`: a segment's kept/ is removed once the next segment has committed;
the final documents, every excluded/ and the stats are those of a run that keeps them, and a
finished run still resumes and takes appended stages."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from data_pipeline.__main__ import execute, load_config
from stack_common.errors import ConfigError
from stack_common.shards import records_sha256

DOC_STAGES = "normalize,clean_lines,filter"      # annotate is added: 00..03, then the dedup stages
ALL_STAGES = f"stages=[{DOC_STAGES},exact_dedup,minhash_dedup]"


def run(raw_web: Path, out: Path, *overrides: str) -> dict:
    return execute(load_config([f"input={raw_web}/raw-00.jsonl", f"output={out}", "workers=1", *overrides]))


def kept_dirs(out: Path) -> list[str]:
    return sorted(str(p.parent.relative_to(out)) for p in out.glob("stages/*/kept"))


def outputs(out: Path) -> dict:
    """The final and excluded records and the stats without timings and memory."""
    stats = json.loads((out / "stats.json").read_text())
    stats.pop("seconds")
    for stage in stats["stages"]:
        for measured in ("seconds", "step_seconds", "peak_rss_mb"):
            stage.pop(measured, None)
    excluded = {p.parent.name: records_sha256(p) for p in sorted(out.glob("stages/*/excluded"))}
    return {"final": records_sha256(out / "final"), "excluded": excluded, "stats": stats}


@pytest.fixture(scope="module")
def kept_run(raw_web, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("kept") / "out"
    run(raw_web, out, ALL_STAGES)
    return out


def test_only_the_last_stage_keeps_its_documents(raw_web, kept_run, tmp_path):
    assert kept_dirs(kept_run) == ["stages/03_filter", "stages/04_exact_dedup", "stages/05_minhash_dedup"]
    out = tmp_path / "out"
    stats = run(raw_web, out, ALL_STAGES, "keep_stage_outputs=false")
    assert kept_dirs(out) == ["stages/05_minhash_dedup"]
    assert stats["reconciled"] and stats["final_source"] == "stages/05_minhash_dedup/kept"
    assert sum(stats["stages"][4]["excluded"].values()) > 0 and stats["docs_kept"] > 0
    assert len(list(out.glob("stages/*/stats.json"))) == 6 and len(list(out.glob("stages/*/excluded"))) == 6
    assert outputs(out) == outputs(kept_run)
    # not a deciding setting: a rerun with true skips every stage and brings nothing back
    stage_stats = sorted(out.glob("stages/*/stats.json"))
    mtimes = [p.stat().st_mtime_ns for p in stage_stats]
    run(raw_web, out, ALL_STAGES)
    assert [p.stat().st_mtime_ns for p in stage_stats] == mtimes and kept_dirs(out) == ["stages/05_minhash_dedup"]
    assert outputs(out) == outputs(kept_run)


def test_a_finished_run_without_stage_outputs_takes_an_appended_stage(raw_web, kept_run, tmp_path):
    out = tmp_path / "out"
    first = run(raw_web, out, f"stages=[{DOC_STAGES},exact_dedup]", "keep_stage_outputs=false")
    assert kept_dirs(out) == ["stages/04_exact_dedup"] and first["reconciled"]
    assert run(raw_web, out, f"stages=[{DOC_STAGES},exact_dedup]", "keep_stage_outputs=false")["docs_kept"] == \
        first["docs_kept"]     # resumed: every stage skipped, none reads a removed kept/
    stats = run(raw_web, out, ALL_STAGES, "keep_stage_outputs=false")
    assert stats["stages"][-1]["docs_in"] == first["docs_kept"]
    assert kept_dirs(out) == ["stages/05_minhash_dedup"]
    assert outputs(out) == outputs(kept_run)


def test_a_run_that_kept_them_drops_them_on_a_rerun(raw_web, kept_run, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(kept_run, out)
    run(raw_web, out, ALL_STAGES, "keep_stage_outputs=false")
    assert kept_dirs(out) == ["stages/05_minhash_dedup"]
    assert outputs(out) == outputs(kept_run)


def test_a_bad_value_names_the_field(tmp_path):
    with pytest.raises(ConfigError, match="keep_stage_outputs: Value .maybe. is not a valid bool"):
        load_config([f"output={tmp_path}", "keep_stage_outputs=maybe"])
