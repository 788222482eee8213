"""Run a pipeline: plan the stages, run per-document segments unit by unit (local processes or
Ray), hand global stages to `data_pipeline.dedup`, assemble stage directories, write the
run-level stats and funnel chart.

Output layout (OUT = cfg.output):
    OUT/run_config.json                   the settings that decide the output (checked on rerun)
    OUT/stages/NN_<stage>/kept/           DOC_SCHEMA shards (last stage of a fused segment only; with
                                          keep_stage_outputs=false removed once the next segment commits)
    OUT/stages/NN_<stage>/excluded/       EXCLUDED_SCHEMA shards (stage, reason)
    OUT/stages/NN_<stage>/stats.json      written last: its presence marks the stage complete
    OUT/quarantine/                       QUARANTINE_SCHEMA shards (file, location, reason, raw)
    OUT/final/                            the last stage's kept shards (hard links) + manifest
    OUT/stats.json, OUT/funnel.png        per-stage funnel with reconciled counts
    OUT/work/                             per-unit results while a segment runs (removed after)
    OUT/.lock                             flock held by the run's driver, with its pid and host (see `run_lock`)
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pyarrow.compute as pc

from stack_common.atomic import atomic_dir, atomic_write_json, read_json, remove_stale_tmp, sha256_file
from stack_common.config import Checks, as_plain
from stack_common.errors import UserError
from stack_common.logging import get_logger
from stack_common.shards import ShardFile, iter_batches, read_manifest, write_manifest
from stack_common.storage import Place, is_uri, public_uri
from stack_common.tasks import ray_options, shared_workers

from .config import GLOBAL_STAGE_NAMES, NEEDS_LANG, PER_DOC_STAGES, PipelineConfig
from .dedup.instances import check_stages as check_global_stages, output_settings, release_work, split_stage, \
    stage_settings
from .executors import run_units
from .filters import check_rules
from .funnel import plot_funnel
from .lang import lang_model_identity
from .input_split import FilePart, plan_parts
from .readers import Location, expand_inputs, input_id_names
from .schema import DOC_SCHEMA, EXCLUDED_SCHEMA, QUARANTINE_SCHEMA
from .unit import process_unit

log = get_logger("data_pipeline.run")
LOCK_NAME = ".lock"
DECISIVE_KEYS = ("stages", "reader", "normalize", "lang", "content_type", "rules", "quality", "dedup",
                 "harmful", "pii", "decontaminate")
# Sections read by these stages only: free to change while none of them has run.
SETTINGS_OF_LATER_STAGES = {"dedup": GLOBAL_STAGE_NAMES, "harmful": ("harmful",), "pii": ("pii",),
                            "decontaminate": ("decontaminate",)}


@dataclass
class Segment:
    kind: str                 # "docs" (fused per-document stages) or "global"
    stages: list[str]
    first_index: int

    def stage_dirs(self, out: Path) -> list[Path]:
        return [out / "stages" / f"{self.first_index + i:02d}_{name}" for i, name in enumerate(self.stages)]


def resolve_stages(cfg: PipelineConfig) -> list[str]:
    """The user's stage list, with `annotate` added where a stage needs the language."""
    stages = list(cfg.stages)
    if "annotate" not in stages and not cfg.reader.lang_field:
        first_needing = next((i for i, s in enumerate(stages) if s in NEEDS_LANG), None)
        if first_needing is not None:
            at = 1 if stages and stages[0] == "normalize" and first_needing > 0 else first_needing
            stages.insert(at, "annotate")
            log.info("stage 'annotate' added before %s: later stages need the language", stages[at + 1])
    return stages


def validate(cfg: PipelineConfig, stages: list[str]) -> None:
    checks = Checks()
    known = PER_DOC_STAGES + GLOBAL_STAGE_NAMES
    for stage in stages:
        base = stage.partition("@")[0]
        checks.require(base in known, f"stages: unknown stage '{stage}' (known: {', '.join(known)})")
        checks.require(base == stage or base in GLOBAL_STAGE_NAMES,
                       f"stages: '{stage}': only global stages have instances (<stage>@<name>)")
    checks.problems += check_global_stages(stages, cfg.dedup)
    checks.require(len(set(stages)) == len(stages), f"stages: a stage is listed twice: {stages}")
    checks.require(bool(cfg.input), "input: give input files, e.g. input='raw/*.jsonl.gz'")
    checks.require(bool(cfg.output), "output: give an output directory, e.g. output=out/")
    checks.require(not is_uri(str(cfg.output)), f"output: {str(cfg.output)!r}: the output must be a local or mounted "
                   "path: a run directory needs a lock (flock), renames and hard links, which object stores lack. "
                   "Mount the bucket (e.g. s3fs, gcsfuse) and give its path, or write locally and copy final/ "
                   "afterwards (only the input may be a URI).")
    checks.require(cfg.workers >= 1, f"workers: must be >= 1, got {cfg.workers}")
    checks.require(cfg.reader.unit_mb >= 0, f"reader.unit_mb: must be >= 0 (0: one unit a file), got {cfg.reader.unit_mb}")
    checks.require(cfg.executor in ("local", "ray"), f"executor: 'local' or 'ray', got '{cfg.executor}'")
    if "quality" in stages:
        if checks.require(bool(cfg.quality.model), "quality.model: the quality stage needs a model "
                          "(train one with task=quality_train)"):
            checks.path_exists(cfg.quality.model, "quality.model")
        checks.require(cfg.quality.mode in ("threshold", "top_fraction", "score_only"),
                       f"quality.mode: threshold | top_fraction | score_only, got '{cfg.quality.mode}'")
        checks.require(0.0 <= cfg.quality.threshold <= 1.0, f"quality.threshold: in [0, 1], got {cfg.quality.threshold}")
        for lang, fraction in cfg.quality.top_fraction.items():
            checks.require(0.0 < fraction <= 1.0, f"quality.top_fraction.{lang}: in (0, 1], got {fraction}")
    if cfg.lang.fasttext_model:
        checks.path_exists(cfg.lang.fasttext_model, "lang.fasttext_model")
    for key, path in stage_data_files(cfg, stages).items():
        checks.path_exists(path, key)
    harmful = cfg.harmful
    checks.require("harmful" not in stages or bool(harmful.word_lists or harmful.url_lists or harmful.model),
                   "harmful: no word_lists, url_lists or model: the stage would pass everything")
    checks.require("decontaminate" not in stages or bool(cfg.decontaminate.eval_sets),
                   "decontaminate.eval_sets: name the evaluation sets, e.g. {gsm8k: [gsm8k_test.jsonl]}")
    checks.raise_if_any()
    if "filter" in stages or "clean_lines" in stages:
        check_rules(cfg.rules)
    if "decontaminate" in stages:   # a bad evaluation file is reported before any work starts
        from .decontaminate import load_eval_sets
        load_eval_sets(cfg.decontaminate)


def plan(stages: list[str], cfg: PipelineConfig) -> list[Segment]:
    """Consecutive per-document stages fuse into one segment; a top_fraction quality stage ends
    its segment (its cut-off needs every score); each global stage is a segment of its own."""
    segments: list[Segment] = []
    for index, stage in enumerate(stages):
        fusable = stage in PER_DOC_STAGES
        last = segments[-1] if segments else None
        ends_segment = last is not None and last.stages[-1] == "quality" and cfg.quality.mode == "top_fraction"
        if fusable and last is not None and last.kind == "docs" and not ends_segment:
            last.stages.append(stage)
        else:
            segments.append(Segment("docs" if fusable else "global", [stage], index))
    return segments


def model_paths(cfg: PipelineConfig, stages: list[str]) -> dict[str, str]:
    """Config key -> file of every model the run's stages load (the language model: its file, or the
    extension module CLD2's tables are compiled into)."""
    lang_model = lang_model_identity(cfg.lang) if "annotate" in stages else None
    files = {"lang.model": lang_model["file"] if lang_model else None,
             "quality.model": cfg.quality.model if "quality" in stages else None, **stage_data_files(cfg, stages)}
    return {key: path for key, path in files.items() if path}


def stage_data_files(cfg: PipelineConfig, stages: list[str]) -> dict[str, str]:
    """Config key -> file of the harmful stage's model and lists and the evaluation sets: replacing
    one under the same path mid-run is refused like a changed model."""
    from .harmful import list_path

    files = {}
    if "harmful" in stages:
        files["harmful.model"] = cfg.harmful.model
        for kind in ("word_lists", "url_lists"):
            for category, paths in getattr(cfg.harmful, kind).items():
                files.update({f"harmful.{kind}.{category}[{i}]": str(list_path(p)) for i, p in enumerate(paths)})
    if "decontaminate" in stages:
        for name, paths in cfg.decontaminate.eval_sets.items():
            files.update({f"decontaminate.eval_sets.{name}[{i}]": p for i, p in enumerate(paths)})
    return {key: path for key, path in files.items() if path}


def model_files(cfg: PipelineConfig, stages: list[str]) -> dict[str, str]:
    """Config key -> content hash of every model file the run's stages load."""
    return {key: sha256_file(path) for key, path in model_paths(cfg, stages).items()}


def check_models_unchanged(previous: dict, current: dict, cfg: PipelineConfig, stages: list[str]) -> None:
    """A model file replaced under the same path would silently mix two models' outputs in one run."""
    for key, digest in (previous.get("model_sha256") or {}).items():
        if key in current and current[key] != digest and not cfg.overwrite:
            path = model_paths(cfg, stages)[key]
            raise UserError(f"{key} changed since this run started (sha256 {digest[:12]}... when it started, "
                            f"{current[key][:12]}... now): a resumed run must use the same model", file=path,
                            expected="the original model file, a new output directory, or overwrite=true")


def input_stats(inputs: list[Location]) -> list[list]:
    """[size, modification time in ns] of every input file, in the order of `inputs`."""
    return [[info.size, info.mtime_ns] for info in (Place.of(p).info() for p in inputs)]


def check_inputs_unchanged(previous: dict, decisive: dict, inputs: list[Location], cfg: PipelineConfig) -> None:
    """An input file rewritten under the same name mid-run would mix documents of two versions: the
    units done read the old file, the rest would read the new one."""
    before = previous.get("input_stat")
    if cfg.overwrite or not before or previous.get("input_files") != decisive["input_files"]:
        return
    for path, (size0, mtime0), (size1, mtime1) in zip(inputs, before, decisive["input_stat"]):
        if (size0, mtime0) != (size1, mtime1):
            raise UserError(f"input file changed since this run started ({size0:,} -> {size1:,} bytes, modified "
                            f"{_when(mtime0)} -> {_when(mtime1)}): resuming would mix two versions of it",
                            file=public_uri(path),
                            expected="the original file (same size and modification time), a new output "
                                     "directory, or overwrite=true")


def _when(mtime_ns: int | None) -> str:
    if mtime_ns is None:
        return "unknown"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(mtime_ns / 1e9)) + f".{mtime_ns % 10**9:09d} UTC"


def check_run_config(out: Path, cfg: PipelineConfig, inputs: list[Location], stages: list[str]) -> None:
    """Refuse to mix two runs in one directory; stages appended to a finished list are fine."""
    path = out / "run_config.json"
    previous = read_json(path) if path.is_file() else None
    if previous and "unit_mb" not in previous.get("reader", {}) and not cfg.overwrite:
        # made before input files were cut into parts: its units were whole files, and stay so
        log.info("%s was started before reader.unit_mb: resumed with one unit per input file", out)
        cfg.reader.unit_mb = 0
        previous["reader"]["unit_mb"] = 0
    decisive = json.loads(json.dumps({**{key: as_plain(getattr(cfg, key)) for key in DECISIVE_KEYS},
                                      "dedup": output_settings(as_plain(cfg.dedup)),
                                      "stages": stages, "input_files": [public_uri(p) for p in inputs],
                                      "input_stat": input_stats(inputs),
                                      "model_sha256": model_files(cfg, stages)}))
    if previous:
        models = decisive["model_sha256"]
        check_models_unchanged(previous, models, cfg, stages)
        check_inputs_unchanged(previous, decisive, inputs, cfg)
        before = previous.get("model_sha256", {})
        # Models of stages appended to the run (or unrecorded by an older run) are new, not changed;
        # input sizes and times unrecorded by an older run are taken as they are now.
        comparable = {**previous, "stages": stages, "input_stat": previous.get("input_stat", decisive["input_stat"]),
                      "model_sha256": {**before, **{k: v for k, v in models.items() if k not in before}}}
        # Settings read only by stages the run has not reached yet may change (appended stages).
        comparable.update({key: decisive[key] for key in SETTINGS_OF_LATER_STAGES
                           if not any(s.partition("@")[0] in SETTINGS_OF_LATER_STAGES[key] for s in previous["stages"])})
        same_but_stages = comparable == decisive
        if not (same_but_stages and stages[:len(previous["stages"])] == previous["stages"]):
            if not cfg.overwrite:
                raise UserError("the output directory holds a run with different settings (see its run_config.json)",
                                file=out, expected="a new output directory, or overwrite=true to replace it")
            log.warning("overwrite=true: removing the previous run in %s", out)
            clear_run_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    if not path.is_file() or read_json(path) != decisive:
        atomic_write_json(path, decisive)


def clear_run_dir(out: Path) -> None:
    """Remove a previous run from `out`, all but the lock file this run holds."""
    for entry in out.iterdir():
        if entry.name == LOCK_NAME:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


@contextlib.contextmanager
def run_lock(out: Path) -> Iterator[None]:
    """Hold an exclusive flock on OUT/.lock for the whole run: a second driver on the same output
    directory is refused, naming the holder's pid and host (written into the lock file), instead
    of redoing and overwriting the first one's units. The kernel drops the lock when its holder
    exits, however it died (SIGKILL included), so a rerun after a crash is never blocked. The
    file stays: deleting it would let the next driver lock a new file while one still holds the
    old. Workers do not inherit it (Python opens it close-on-exec; local workers are spawned)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 256, 0).decode(errors="replace").strip() or "unknown pid"
            raise UserError(f"another run ({holder}) is writing this output directory; its lock is {path}",
                            file=out, expected="that run to end first, or another output directory") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def run_pipeline(cfg: PipelineConfig) -> dict:
    with ray_options(cfg.ray):
        return _run_pipeline(cfg)


def _run_pipeline(cfg: PipelineConfig) -> dict:
    start = time.time()
    stages = resolve_stages(cfg)
    validate(cfg, stages)
    inputs = expand_inputs(list(cfg.input))
    # One driver per output directory: two would redo each other's units and publish over them.
    with run_lock(Path(cfg.output)):
        return _run_locked(cfg, stages, inputs, start)


def _run_locked(cfg: PipelineConfig, stages: list[str], inputs: list[Location], start: float) -> dict:
    out = Path(cfg.output)
    check_run_config(out, cfg, inputs, stages)
    segments = plan(stages, cfg)
    for seg_no, segment in enumerate(segments):
        if all((d / "stats.json").is_file() for d in segment.stage_dirs(out)):
            log.info("stages %s already complete: skipped", ", ".join(segment.stages))
        else:
            # One set of local workers per segment: its steps share them, and what a stage cached in
            # them (models, n-gram sets) is gone before the next stage's memory budget applies.
            with shared_workers():
                run_segment(segment, seg_no, segments, inputs, cfg, out)
        # Both also for a completed segment: a run killed before the removal left them.
        if segment.kind == "global":
            release_work(segment.stage_dirs(out)[0], cfg.dedup)
        if seg_no and not cfg.keep_stage_outputs:
            release_kept(segments[seg_no - 1], segment, out)
    stats = write_run_stats(out, segments, units_dir_of(segments[-1], out), time.time() - start)
    log.info("done: %d documents read, %d kept, %d quarantined -> %s", stats["docs_read"], stats["docs_kept"],
             stats["quarantined"], out / "final")
    return stats


def run_segment(segment: Segment, seg_no: int, segments: list[Segment], inputs: list[Location], cfg: PipelineConfig,
                out: Path) -> None:
    """Run a segment on the run's input (the first) or on the kept/ of the segment before it."""
    source = units_dir_of(segments[seg_no - 1], out) if seg_no else None
    if segment.kind == "docs":
        units = kept_files(source) if source else inputs
        run_doc_segment(segment, [str(p) for p in units], cfg, out, first=seg_no == 0)
    else:
        run_global_stage(segment, source or single_shard_dir(cfg.input, segment), cfg, out)


def units_dir_of(segment: Segment, out: Path) -> Path:
    return segment.stage_dirs(out)[-1] / "kept"


def release_kept(previous: Segment, segment: Segment, out: Path) -> None:
    """`keep_stage_outputs=false`: remove the kept/ of `previous`, the input of `segment`, once
    `segment` has committed (every stats.json written). Only the last segment's kept/ (final/'s
    source) survives the run; excluded/ and stats.json stay."""
    if all((d / "stats.json").is_file() for d in segment.stage_dirs(out)):
        shutil.rmtree(units_dir_of(previous, out), ignore_errors=True)


def kept_files(kept_dir: Path) -> list[Path]:
    return [kept_dir / entry["name"] for entry in read_manifest(kept_dir)["files"]]


# --- per-document segments ----------------------------------------------------------------------

def run_doc_segment(segment: Segment, units: list[str], cfg: PipelineConfig, out: Path, first: bool) -> None:
    dirs = segment.stage_dirs(out)
    work = out / "work" / dirs[-1].name
    work.mkdir(parents=True, exist_ok=True)
    removed = remove_stale_tmp(work)
    if removed:
        log.info("removed %d unfinished unit(s) of an interrupted run; they are redone", removed)
    plan = planned_units(work, units, cfg) if first else [(path, None, None) for path in units]
    todo = [(i, unit) for i, unit in enumerate(plan) if not (unit_dir(work, i) / "stats.json").is_file()]
    log.info("stages %s: %d unit(s) of %d file(s), %d to do, %d worker(s), %s executor", ", ".join(segment.stages),
             len(plan), len(units), len(todo), cfg.workers, cfg.executor)
    tasks = [(path, str(unit_dir(work, i)), segment.stages, cfg, id_name, part) for i, (path, id_name, part) in todo]
    run_units(process_unit, tasks, cfg.workers, cfg.executor, cfg.ray_address, desc="+".join(segment.stages))
    unit_dirs = [unit_dir(work, i) for i in range(len(plan))]
    if cfg.quality.mode == "top_fraction" and segment.stages[-1] == "quality":
        from .top_fraction import apply_top_fraction
        apply_top_fraction(unit_dirs, cfg.quality.top_fraction, lambda fn, tasks: run_units(
            fn, tasks, cfg.workers, cfg.executor, cfg.ray_address, desc="quality: top_fraction"), cfg.shards)
    assemble_segment(segment, dirs, unit_dirs, out, first)
    shutil.rmtree(work)
    if not any(work.parent.iterdir()):
        work.parent.rmdir()


def planned_units(work: Path, files: list[str], cfg: PipelineConfig) -> list[tuple[str, str, FilePart | None]]:
    """(file, its id name, part) of every unit, file by file in input order (input_split). The plan
    is made once and kept in work/<stage>/units.json (file numbers and parts: no URI, so no secret),
    so a resume runs the units it started with even if a file's footer could not be read this time
    (the files themselves are checked unchanged: run_config.json)."""
    path = work / "units.json"
    id_names = input_id_names(files)
    if path.is_file():
        plan = read_json(path)
        if plan["files"] != len(files):
            raise UserError(f"the unit plan is for {plan['files']} input files, the inputs are {len(files)}",
                            file=path, expected="the original inputs, a new output directory, or overwrite=true")
        units = [(k, FilePart(*part) if part else None) for k, part in plan["units"]]
    else:
        units = [(k, part) for k, file in enumerate(files) for part in plan_parts(file, cfg.reader.unit_mb)]
        atomic_write_json(path, {"files": len(files), "units": [[k, part and [part.start, part.stop, part.before]]
                                                               for k, part in units]})
    return [(files[k], id_names[k], part) for k, part in units]


def unit_dir(work: Path, index: int) -> Path:
    return work / f"unit-{index:05d}"


def link_shards(src_dirs: list[Path], dst: Path, schema, extra: dict) -> None:
    """Publish the shards of several unit directories as one shard directory (hard links, no copy)."""
    files = []
    dst.mkdir(parents=True, exist_ok=True)
    for index, src in enumerate(src_dirs):
        for entry in read_manifest(src)["files"]:
            name = f"u{index:05d}-{entry['name']}"
            _link_or_copy(src / entry["name"], dst / name)
            files.append(ShardFile(name, entry["rows"], entry["bytes"], entry["sha256"]))
    write_manifest(dst, files, schema, extra)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def assemble_segment(segment: Segment, dirs: list[Path], unit_dirs: list[Path], out: Path, first: bool) -> None:
    unit_stats = [read_json(d / "stats.json") for d in unit_dirs]
    for k, (stage, stage_dir) in enumerate(zip(segment.stages, dirs)):
        if (stage_dir / "stats.json").is_file():
            continue
        if stage_dir.exists():
            shutil.rmtree(stage_dir)
        stats = merge_stage_stats([s["stages"][k] for s in unit_stats])
        with atomic_dir(stage_dir) as tmp:
            link_shards([d / "excluded" / stage for d in unit_dirs], tmp / "excluded", EXCLUDED_SCHEMA, {"stage": stage})
            if k == len(segment.stages) - 1:
                extra = {"stage": stage, "stages": segment.stages}
                if stats.get("model_sha256"):
                    extra["quality_model_sha256"] = stats["model_sha256"]
                link_shards([d / "kept" for d in unit_dirs], tmp / "kept", DOC_SCHEMA, extra)
            stats["fused_with"] = segment.stages
            atomic_write_json(tmp / "stats.json", stats)
    if first and not (out / "quarantine" / "manifest.json").is_file():
        if (out / "quarantine").exists():
            shutil.rmtree(out / "quarantine")
        reasons = Counter()
        for s in unit_stats:
            reasons.update(s["quarantine"])
        with atomic_dir(out / "quarantine") as tmp:
            link_shards([d / "quarantine" for d in unit_dirs], tmp, QUARANTINE_SCHEMA, {"reasons": dict(reasons)})


def merge_stage_stats(parts: list[dict]) -> dict:
    merged = {"stage": parts[0]["stage"] if parts else ""}
    for part in parts:
        for key, value in part.items():
            if key == "stage":
                continue
            if isinstance(value, dict):
                bucket = merged.setdefault(key, Counter())
                bucket.update(value)
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                merged[key] = merged.get(key, 0) + value
            else:
                merged[key] = value
    return {k: (dict(sorted(v.items())) if isinstance(v, Counter) else (round(v, 4) if isinstance(v, float) else v))
            for k, v in merged.items()}


# --- global stages (data_pipeline.dedup) -------------------------------------------------------

def global_stages() -> dict:
    try:
        from .dedup import GLOBAL_STAGES
    except ImportError as err:
        raise UserError(f"global dedup stages are not available ({err})", field="stages",
                        expected="data_pipeline.dedup.GLOBAL_STAGES, or a stage list without *_dedup") from None
    return GLOBAL_STAGES


def single_shard_dir(patterns: list[str], segment: Segment) -> Path:
    """A run that starts with a global stage reads one shard directory (e.g. a previous OUT/final)."""
    if any(is_uri(p) for p in patterns):
        raise UserError(f"'{segment.stages[0]}' as the first stage reads a local shard directory, not a URI",
                        field="input", expected="per-document stages (e.g. normalize) first, or a mounted path")
    dirs = [Path(p) for p in patterns if (Path(p) / "manifest.json").is_file()]
    if len(dirs) != 1 or len(patterns) != 1:
        raise UserError(f"'{segment.stages[0]}' as the first stage reads one shard directory", field="input",
                        expected="input=OUT/final, or per-document stages (e.g. normalize) first")
    return dirs[0]


def run_global_stage(segment: Segment, input_dir: Path, cfg: PipelineConfig, out: Path) -> None:
    stage = segment.stages[0]
    registry = global_stages()
    if split_stage(stage)[0] not in registry:
        raise UserError(f"data_pipeline.dedup has no stage '{stage}' (it has {', '.join(registry)})", field="stages")
    log.info("stage %s (global) on %s", stage, input_dir)
    stage_dir = segment.stage_dirs(out)[0]
    registry[split_stage(stage)[0]](input_dir, stage_dir, stage_settings(stage, cfg.dedup), cfg.workers, cfg.executor,
                                    cfg.ray_address, stage=stage, compression=cfg.shards)
    if not (stage_dir / "stats.json").is_file():
        raise RuntimeError(f"stage {stage} returned without writing {stage_dir / 'stats.json'}")


# --- run-level stats ---------------------------------------------------------------------------

def write_run_stats(out: Path, segments: list[Segment], final_kept: Path, seconds: float) -> dict:
    stage_stats = []
    for segment in segments:
        for name, directory in zip(segment.stages, segment.stage_dirs(out)):
            stats = read_json(directory / "stats.json")
            stage_stats.append({"stage": name, "dir": str(directory.relative_to(out)), **{k: v for k, v in stats.items()
                                                                                           if k != "stage"}})
    if not (out / "quarantine" / "manifest.json").is_file():   # the run started from shards: nothing to quarantine
        write_manifest(out / "quarantine", [], QUARANTINE_SCHEMA, {"reasons": {}})
    quarantine = read_manifest(out / "quarantine")
    quarantined = quarantine["rows"]
    docs_read = stage_stats[0]["docs_in"]
    kept = stage_stats[-1]["docs_out"]
    excluded_total = sum(sum(s["excluded"].values()) for s in stage_stats)
    chain_ok = all(a["docs_out"] == b["docs_in"] for a, b in zip(stage_stats, stage_stats[1:]))
    stages_ok = all(s["docs_in"] == s["docs_out"] + sum(s["excluded"].values()) for s in stage_stats)
    publish_final(final_kept, out / "final")
    langs: Counter = Counter()
    for batch in iter_batches(out / "final", columns=["lang"]):
        for entry in pc.value_counts(batch.column("lang")).to_pylist():
            langs[entry["values"]] += entry["counts"]
    stats = {
        "records_read": docs_read + quarantined, "docs_read": docs_read, "quarantined": quarantined,
        "quarantine_reasons": quarantine["extra"].get("reasons", {}), "docs_kept": kept,
        "kept_langs": dict(sorted(langs.items())),
        "docs_excluded": excluded_total, "bytes_read": stage_stats[0]["bytes_in"], "bytes_kept": stage_stats[-1]["bytes_out"],
        "reconciled": chain_ok and stages_ok and docs_read == kept + excluded_total,
        "final_dir": "final", "final_source": str(final_kept.relative_to(out)),
        "seconds": round(seconds, 2), "stages": stage_stats,
    }
    if not stats["reconciled"]:
        log.error("counts do not reconcile: see %s", out / "stats.json")
    atomic_write_json(out / "stats.json", stats)
    plot_funnel(stats, out / "funnel.png")
    return stats


def publish_final(kept: Path, final: Path) -> None:
    manifest = read_manifest(kept)
    if (final / "manifest.json").is_file() and read_json(final / "manifest.json") == manifest:
        return   # already published: leave it alone for readers
    with atomic_dir(final, overwrite=True) as tmp:   # readers never see final/ missing
        for entry in manifest["files"]:
            _link_or_copy(kept / entry["name"], tmp / entry["name"])
        shutil.copy2(kept / "manifest.json", tmp / "manifest.json")
