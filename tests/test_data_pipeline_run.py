"""The pipeline end to end on the bundled raw-web sample: counts reconcile, the output is the
same for any worker count and on Ray, a SIGKILLed run resumes to byte-identical shards, bad
input is quarantined with reasons, and the quality model trains, scores and filters."""
from __future__ import annotations

import gzip
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_pipeline.__main__ import execute, load_config
from stack_common.errors import UserError
from stack_common.shards import read_manifest, read_table

REPO = Path(__file__).resolve().parents[1]
FILTER_STAGES = "stages=[normalize,clean_lines,filter]"


def run(inputs: str, out: Path, *overrides: str) -> dict:
    return execute(load_config([f"input={inputs}", f"output={out}", *overrides]))


def raw_records(raw_web: Path) -> list[dict]:
    records = []
    for path in sorted(raw_web.glob("raw-*.jsonl*")):
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        for line in data.splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                pass
    return [r for r in records if isinstance(r, dict) and isinstance(r.get("text"), str) and "\x00" not in r["text"]]


def shard_digest(out: Path) -> dict:
    """Every shard of a run by path -> sha256, plus the stats without timings."""
    digest = {}
    for manifest in sorted(out.rglob("manifest.json")):
        for entry in read_manifest(manifest.parent)["files"]:
            digest[str(manifest.parent.relative_to(out) / entry["name"])] = entry["sha256"]
    stats = json.loads((out / "stats.json").read_text())
    for key in ("seconds",):
        stats.pop(key)
    for stage in stats["stages"]:
        stage.pop("seconds")
    return {"shards": digest, "stats": stats}


@pytest.fixture(scope="module")
def quality_model(raw_web, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("quality")
    spam = [r for r in raw_records(raw_web) if r["meta"]["kind"] == "spam"]
    (tmp / "spam.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in spam), encoding="utf-8")
    model = tmp / "quality.bin"
    report = execute(load_config(["task=quality_train", f"quality_train.positive=[{REPO}/data/sample/en.parquet,"
                                  f"{REPO}/data/sample/zh.parquet]", f"quality_train.negative=[{tmp}/spam.jsonl]",
                                  f"quality_train.output={model}", "quality_train.heldout_fraction=0.3"]))
    assert report["heldout_negative"] > 0 and report["heldout_positive"] > 0
    return model


@pytest.fixture(scope="module")
def reference_run(raw_web, quality_model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "out"
    run(f"{raw_web}/*.jsonl*", out, "stages=[normalize,clean_lines,filter,quality]", f"quality.model={quality_model}",
        "quality.threshold=0.2")
    return out


def test_quality_model_report(quality_model):
    report = json.loads(Path(f"{quality_model}.report.json").read_text())
    assert report["auc"] > 0.9 and report["recall"] > 0.8 and report["precision"] > 0.8
    assert report["bytes"] == quality_model.stat().st_size < 8 * 1024 * 1024
    from stack_common.atomic import sha256_file
    assert report["sha256"] == sha256_file(quality_model)


def test_counts_reconcile(reference_run, raw_web):
    stats = json.loads((reference_run / "stats.json").read_text())
    raw = json.loads((raw_web / "raw_manifest.json").read_text())
    assert stats["records_read"] == raw["records"] + raw["malformed"]
    assert stats["quarantined"] == raw["malformed"] == 6
    assert stats["quarantine_reasons"] == {"bad_json": 1, "missing_text": 1, "text_not_string": 1, "nul_byte": 1,
                                           "invalid_utf8": 1, "not_an_object": 1}
    assert stats["reconciled"]
    kept = read_table(reference_run / "final")
    assert kept.num_rows == stats["docs_kept"]
    excluded_rows = 0
    for stage in stats["stages"]:
        excluded = read_table(reference_run / stage["dir"] / "excluded")
        assert excluded.num_rows == sum(stage["excluded"].values())
        assert set(excluded.column("stage").to_pylist()) <= {stage["stage"]}
        excluded_rows += excluded.num_rows
        assert stage["docs_in"] == stage["docs_out"] + sum(stage["excluded"].values())
    assert stats["records_read"] == kept.num_rows + excluded_rows + read_table(reference_run / "quarantine").num_rows
    # every spam page is gone, most clean pages survive, nothing is both kept and excluded
    kinds = {r["id"]: r["meta"]["kind"] for r in raw_records(raw_web)}
    kept_ids = kept.column("id").to_pylist()
    assert not any(kinds[i] == "spam" for i in kept_ids)
    clean = sum(1 for k in kinds.values() if k == "clean")
    assert sum(1 for i in kept_ids if kinds[i] == "clean") > 0.7 * clean
    assert set(kept.column("lang").to_pylist()) <= {"zh", "en", "code", "other"}
    assert sum(stats["kept_langs"].values()) == kept.num_rows and stats["kept_langs"]["zh"] > 0


def test_quality_scores_and_model_hash(reference_run, quality_model):
    from stack_common.atomic import sha256_file

    kept = read_table(reference_run / "final").to_pylist()
    for row in kept:
        if row["lang"] in ("zh", "en"):
            assert 0.2 <= row["quality_score"] <= 1.0
        else:
            assert row["quality_score"] == -1.0
    assert read_manifest(reference_run / "final")["extra"]["quality_model_sha256"] == sha256_file(quality_model)
    boilerplate_removed = json.loads((reference_run / "stats.json").read_text())["stages"][2]["lines_removed"]
    assert boilerplate_removed["navigation"] > 0 and boilerplate_removed["copyright"] > 0


def test_top_fraction_per_language(raw_web, quality_model, tmp_path):
    out = tmp_path / "top"
    stats = run(f"{raw_web}/*.jsonl*", out, "stages=[normalize,filter,quality]", f"quality.model={quality_model}",
                "quality.mode=top_fraction", "quality.top_fraction={zh: 0.5, en: 0.25}")
    assert stats["reconciled"]
    quality = stats["stages"][-1]
    kept = read_table(out / "final").to_pylist()
    dropped = read_table(out / quality["dir"] / "excluded").to_pylist()
    for lang, fraction in (("zh", 0.5), ("en", 0.25)):
        k = [r["quality_score"] for r in kept if r["lang"] == lang]
        d = [r["quality_score"] for r in dropped if r["lang"] == lang]
        assert len(k) == math.ceil(fraction * (len(k) + len(d)))
        assert min(k) >= max(d)
        assert quality["excluded"][f"{lang}:quality.top_fraction"] == len(d)


@pytest.mark.slow
@pytest.mark.parametrize("executor,workers", [("local", 2), ("ray", 2)])
def test_same_output_for_any_worker_count_and_executor(reference_run, raw_web, quality_model, tmp_path, executor,
                                                       workers, request):
    where = request.getfixturevalue("ray_cluster").overrides() if executor == "ray" else ["executor=local"]
    out = tmp_path / "out"
    run(f"{raw_web}/*.jsonl*", out, "stages=[normalize,clean_lines,filter,quality]", f"quality.model={quality_model}",
        "quality.threshold=0.2", f"workers={workers}", *where)
    assert shard_digest(out) == shard_digest(reference_run)


@pytest.fixture(scope="module")
def many_units(raw_web, tmp_path_factory) -> Path:
    """The raw-web sample split into 16 files, so that a run has many units to interrupt."""
    out = tmp_path_factory.mktemp("units")
    lines = []
    for path in sorted(raw_web.glob("raw-*.jsonl*")):
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        lines.extend(data.splitlines(keepends=True))
    for i in range(16):
        (out / f"part-{i:02d}.jsonl").write_bytes(b"".join(lines[i::16]))
    return out


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "data_pipeline", *args]


@pytest.mark.slow
def test_sigkill_then_resume_gives_identical_output(many_units, tmp_path):
    inputs = f"input={many_units}/*.jsonl"
    reference = tmp_path / "uninterrupted"
    run(f"{many_units}/*.jsonl", reference, FILTER_STAGES)

    out = tmp_path / "killed"
    env = {**os.environ, "BC_NO_PROGRESS": "1"}
    proc = subprocess.Popen(cli(inputs, f"output={out}", FILTER_STAGES), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.glob("work/*/unit-*"))) < 3 and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    done_before_kill = len(list(out.glob("work/*/unit-*")))
    assert 3 <= done_before_kill < 16 and not (out / "stats.json").exists()

    rerun = subprocess.run(cli(inputs, f"output={out}", FILTER_STAGES), env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert f"16 unit(s) of 16 file(s), {16 - done_before_kill} to do" in rerun.stderr
    assert shard_digest(out) == shard_digest(reference)
    assert not list(out.rglob("*.tmp")) and not (out / "work").exists()


def test_rerun_skips_completed_stages_and_refuses_other_settings(raw_web, tmp_path):
    out, inputs = tmp_path / "out", f"{raw_web}/raw-00.jsonl"
    first = run(inputs, out, FILTER_STAGES)
    stage_stats = sorted(out.glob("stages/*/stats.json"))
    mtimes = [p.stat().st_mtime_ns for p in stage_stats]
    assert run(inputs, out, FILTER_STAGES)["docs_kept"] == first["docs_kept"]
    assert [p.stat().st_mtime_ns for p in stage_stats] == mtimes
    # appending a stage to a finished run reuses what is done
    extended = run(inputs, out, "stages=[normalize,clean_lines,filter,exact_dedup]")
    assert [p.stat().st_mtime_ns for p in stage_stats] == mtimes
    assert extended["stages"][-1]["stage"] == "exact_dedup" and extended["stages"][-1]["docs_in"] == first["docs_kept"]
    with pytest.raises(UserError, match="different settings"):
        run(inputs, out, FILTER_STAGES, "rules.en.filter.gopher_quality.min_words=10")
    # dedup settings changed after exact_dedup ran: refused; those of a stage not run yet (pii): free
    with pytest.raises(UserError, match="different settings"):
        run(inputs, out, "stages=[normalize,clean_lines,filter,exact_dedup]", "dedup.exact.digest_bytes=8")
    run(inputs, out, "stages=[normalize,clean_lines,filter,exact_dedup]", "pii.keep_private_ip=false")
    with pytest.raises(UserError, match="different settings"):
        run(inputs, out, "stages=[normalize,filter]")
    stats = run(inputs, out, FILTER_STAGES, "rules.en.filter.gopher_quality.min_words=10", "overwrite=true")
    assert stats["reconciled"] and stats["docs_kept"] > first["docs_kept"]


def test_cli_reports_user_errors_in_one_line(tmp_path):
    result = subprocess.run(cli(f"input={tmp_path}/nothing-*.jsonl", f"output={tmp_path}/out"), capture_output=True,
                            text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {tmp_path}/nothing-*.jsonl: input matches no file "
                                                  "(expected a file, glob or shard directory)"]
    result = subprocess.run(cli(f"input={tmp_path}", f"output={tmp_path}/out", "stages=[normalize,sparkle]"),
                            capture_output=True, text=True)
    assert result.returncode == 2 and "config error: stages: unknown stage 'sparkle'" in result.stderr


# --- bad input ---------------------------------------------------------------------------------

def build_bad_corpus(root: Path) -> dict:
    """Every kind of bad input; returns the expected quarantine reasons and the good documents."""
    good = {"id": "good", "text": "A perfectly fine document about rivers and bridges.", "source": "test"}
    line = lambda obj: json.dumps(obj).encode() + b"\n"   # noqa: E731
    (root / "mixed.jsonl").write_bytes(b"".join([
        line(good),
        b'{"id": "broken", "text": "unterminated\n',
        line({"id": "no-text"}),
        line({"id": "int-text", "text": 42}),
        b'{"id": "nul", "text": "a\\u0000b"}\n',
        b'{"id": "utf8", "text": "\xff\xfe"}\n',
        b'{"id": "surrogate", "text": "\\ud800"}\n',
        b'"just a string"\n',
        line({**good, "id": "good-2"}),
    ]))
    (root / "empty.jsonl").write_bytes(b"")
    no_newline = bytes(b for b in range(256) if b != 0x0A)
    (root / "binary.jsonl").write_bytes(no_newline * 4 + b"\n" + no_newline[::-1])
    big = b'{"id": "huge", "text": "' + b"word " * (10 * 1024 * 1024) + b'"}\n'
    (root / "huge.jsonl").write_bytes(big + line({**good, "id": "after-huge"}))
    full_gz = gzip.compress(b"".join(line({**good, "id": f"gz-{i}"}) for i in range(200)), mtime=0)
    (root / "truncated.jsonl.gz").write_bytes(full_gz[: len(full_gz) // 2])
    import zstandard

    full_zst = zstandard.ZstdCompressor().compress(b"".join(line({**good, "id": f"zst-{i}"}) for i in range(3)))
    (root / "ok.jsonl.zst").write_bytes(full_zst)
    (root / "truncated.jsonl.zst").write_bytes(full_zst[:-7])
    pq.write_table(pa.table({"id": ["p1", "p2", "p3"], "text": [good["text"], None, "fine too"]}), root / "t.parquet")
    (root / "garbage.parquet").write_bytes(b"PAR1 this is not parquet")
    with pa.ipc.new_file(root / "t.arrow", pa.schema([("id", pa.string()), ("text", pa.string())])) as writer:
        writer.write_table(pa.table({"id": ["a1"], "text": [good["text"]]}))
    return {"mixed.jsonl": {"bad_json": 1, "missing_text": 1, "text_not_string": 1, "nul_byte": 1, "invalid_utf8": 2,
                            "not_an_object": 1},
            "binary.jsonl": {"invalid_utf8": 2},
            "huge.jsonl": {"too_large": 1},
            "truncated.jsonl.gz": {"broken_stream": 1},
            "truncated.jsonl.zst": {"broken_stream": 1},
            "t.parquet": {"missing_text": 1},
            "garbage.parquet": {"unreadable_file": 1}}


def test_bad_input_is_quarantined_with_reasons(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    expected = build_bad_corpus(raw)
    out = tmp_path / "out"
    stats = run(f"{raw}/*", out, "stages=[normalize]")
    quarantine = read_table(out / "quarantine").to_pylist()
    found: dict = {}
    for row in quarantine:
        reasons = found.setdefault(Path(row["file"]).name, {})
        reason = row["reason"].split(":")[0]
        reasons[reason] = reasons.get(reason, 0) + 1
        assert row["location"].startswith(("line ", "row ", "file"))
    assert found == expected
    assert stats["quarantined"] == sum(sum(v.values()) for v in expected.values())
    kept_ids = set(read_table(out / "final").column("id").to_pylist())
    assert {"good", "good-2", "after-huge", "p1", "p3", "a1", "zst-0", "zst-2"} <= kept_ids
    gz_kept = sum(1 for i in kept_ids if i.startswith("gz-"))
    assert 0 < gz_kept < 200   # the readable part of the truncated gzip stream is kept
    assert stats["records_read"] == stats["docs_kept"] + stats["docs_excluded"] + stats["quarantined"]
    huge = next(r for r in quarantine if r["reason"].startswith("too_large"))
    assert huge["location"] == "line 1" and len(huge["raw"]) == 64 * 1024


def assert_line_dedup_removed_repeated_lines_only(before_dir: Path, after_dir: Path, stage: dict):
    """A line (normalized, >= 20 characters) found in >= 3 non-code documents stays in exactly one of
    them; every line removed is such a line; code documents pass unchanged."""
    from data_pipeline.dedup.text import normalize

    def lines(text: str) -> set[str]:
        return {normalize(line) for line in text.split("\n")} - {""}

    before = {r["id"]: r for r in read_table(before_dir / "kept").to_pylist()}
    after = {r["id"]: r for r in read_table(after_dir / "kept").to_pylist()}
    prose = [i for i in before if before[i]["lang"] != "code"]
    holders = Counter(line for i in prose for line in lines(before[i]["text"]))
    repeated = {line for line, n in holders.items() if n >= 3 and len(line) >= 20}
    assert len(repeated) == stage["repeated_units"] >= 20
    kept_by = Counter(line for i in prose if i in after for line in lines(after[i]["text"]))
    assert {line: kept_by[line] for line in repeated} == {line: 1 for line in repeated}
    removed = 0
    for i in (i for i in prose if i in after):
        gone = lines(before[i]["text"]) - lines(after[i]["text"])
        assert gone <= repeated, (i, gone - repeated)
        removed += len(gone)
    assert removed >= 400
    assert all(after[i]["text"] == r["text"] for i, r in before.items() if r["lang"] == "code")


def test_demo_stage_list_with_dedup_reconciles(reference_run, raw_web, quality_model, tmp_path):
    """The lead's demo command: per-document stages, then the dedup engineer's global stages."""
    out = tmp_path / "demo"
    stats = run(f"{raw_web}/*.jsonl*", out, "stages=[normalize,clean_lines,filter,quality,exact_dedup,minhash_dedup,"
                "line_dedup]", f"quality.model={quality_model}", "quality.threshold=0.2")
    assert [s["stage"] for s in stats["stages"]][-3:] == ["exact_dedup", "minhash_dedup", "line_dedup"]
    assert stats["reconciled"]
    assert stats["stages"][-4]["docs_out"] == json.loads((reference_run / "stats.json").read_text())["docs_kept"]
    stage_dir = {s["stage"]: out / s["dir"] for s in stats["stages"]}
    planted = {r["id"]: r["meta"] for r in raw_records(raw_web)}
    reached = {r["id"] for r in read_table(stage_dir["exact_dedup"] / "kept").to_pylist()} | \
        {r["id"] for r in read_table(stage_dir["exact_dedup"] / "excluded").to_pylist()}
    # exact and near dedup: every planted copy whose original also reached the stage, one side of each pair
    # excluded and pointing at the other, and nothing else excluded. Besides the planted copies the sample
    # holds one kind of near copy: GNOME help pages whose zh version is still the English text.
    # (a planted copy of such a zh page may be matched to its English twin instead)
    twin_of = {i: f"gnome-help-en/{i.rsplit('/', 1)[1]}" for i in reached if i.startswith("gnome-help-zh/")}
    twins = {frozenset(pair) for pair in twin_of.items()}
    for stage, kind, least in (("exact_dedup", "exact_dup", 1.0), ("minhash_dedup", "near_dup", 0.85)):
        pairs = {frozenset((i, m["of"])) for i, m in planted.items() if m["kind"] == kind and m["of"] in reached}
        via_twin = {frozenset((i, twin_of[m["of"]])) for i, m in planted.items()
                    if m["kind"] == kind and m["of"] in twin_of}
        excluded = {r["id"]: json.loads(r["annotations"])["duplicate_of"]
                    for r in read_table(stage_dir[stage] / "excluded").to_pylist()}
        found = {frozenset(pair) for pair in excluded.items()}
        assert found <= pairs | (twins | via_twin if kind == "near_dup" else set()), (stage, found - pairs)
        assert len(found) == len(excluded) and len(found - pairs) < 10
        assert len(pairs) >= 50 and len(found & pairs) >= least * len(pairs), (stage, len(found), len(pairs))
    assert len(excluded) == stats["stages"][-2]["excluded"]["near_duplicate"]
    assert_line_dedup_removed_repeated_lines_only(stage_dir["minhash_dedup"], stage_dir["line_dedup"], stats["stages"][-1])
    final = read_table(out / "final")
    assert final.num_rows == stats["docs_kept"] and len(set(final.column("id").to_pylist())) == final.num_rows
    assert (out / "funnel.png").stat().st_size > 10_000
    # a later run can start from those shards with a global stage
    again = run(str(out / "final"), tmp_path / "again", "stages=[exact_dedup]")
    assert again["reconciled"] and again["quarantined"] == 0
    assert again["docs_read"] == again["docs_kept"] == stats["docs_kept"]
