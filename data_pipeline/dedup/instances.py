"""Global stage names and their settings, and what happens to a stage's work/ once it is done.

A stage runs once per name in `stages`. `line_dedup@sentence` is an instance of `line_dedup`: its
settings are `dedup.line`, then `dedup.instances.line_dedup.sentence` over them, and its output,
stats and `stage` column carry the full name. So document, paragraph and sentence dedup run in
one pipeline, each with its own settings and stats:

    stages=[..., exact_dedup, minhash_dedup, line_dedup@paragraph, line_dedup@sentence]

(`@` cannot appear in a Hydra override key, hence `instances.<stage>.<name>` rather than
`line@sentence`: `+dedup.instances.line_dedup.sentence.min_count=5` works on the command line.)
"""
from __future__ import annotations

import shutil
from pathlib import Path

# stage -> its settings in the `dedup` config group (configs/data/dedup/default.yaml)
CONFIG_KEYS = {"exact_dedup": "exact", "minhash_dedup": "minhash", "line_dedup": "line",
               "semantic_dedup": "semantic", "cluster_balance": "balance"}
INSTANCES = "instances"
KEEP_WORK = "keep_work"     # a setting of every global stage, beside the stages' own: `dedup.keep_work`


def split_stage(stage: str) -> tuple[str, str | None]:
    """'line_dedup@sentence' -> ('line_dedup', 'sentence'); 'line_dedup' -> ('line_dedup', None)."""
    base, at, instance = stage.partition("@")
    return base, (instance if at else None)


def stage_settings(stage: str, dedup: dict) -> dict:
    """The settings of a global stage or stage instance (unchecked: the stage types them)."""
    base, instance = split_stage(stage)
    settings = dict(dedup.get(CONFIG_KEYS[base]) or {})
    if instance is not None:
        settings.update((dedup.get(INSTANCES) or {}).get(base, {}).get(instance) or {})
    return settings


def check_stages(stages: list[str], dedup: dict) -> list[str]:
    """Problems with the global stage names and the `dedup` settings, one line each."""
    problems = []
    known_keys = [*CONFIG_KEYS.values(), INSTANCES, KEEP_WORK]
    for key in dedup:
        if key not in known_keys:
            problems.append(f"dedup.{key}: unknown settings (known: {', '.join(known_keys)})")
    if not isinstance(dedup.get(KEEP_WORK, False), bool):
        problems.append(f"dedup.{KEEP_WORK}: true or false, got {dedup[KEEP_WORK]!r}")
    instances = dedup.get(INSTANCES) or {}
    for base, named in instances.items():
        if base not in CONFIG_KEYS:
            problems.append(f"dedup.instances.{base}: not a global stage (known: {', '.join(CONFIG_KEYS)})")
        elif not isinstance(named, dict) or not all(isinstance(v, dict) or v is None for v in named.values()):
            problems.append(f"dedup.instances.{base}: a mapping of instance name -> settings, e.g. "
                            f"{{sentence: {{unit: sentence}}}}")
    for stage in stages:
        base, instance = split_stage(stage)
        if base not in CONFIG_KEYS or instance is None:
            continue
        named = instances.get(base) if isinstance(instances.get(base), dict) else {}
        if not instance:
            problems.append(f"stages: '{stage}' names no instance after '@' (e.g. {base}@sentence)")
        elif instance not in named:
            have = ", ".join(f"{base}@{n}" for n in named) or "none"
            problems.append(f"stages: '{stage}' is an unknown instance of {base}: add its settings as "
                            f"dedup.instances.{base}.{instance} (configured instances: {have})")
    return problems


def output_settings(dedup: dict) -> dict:
    """The `dedup` settings that decide a run's output (keep_work does not: a rerun may change it)."""
    return {key: value for key, value in dedup.items() if key != KEEP_WORK}


def release_work(stage_dir: Path, dedup: dict) -> None:
    """Remove the work/ of a committed global stage (its stats.json written) unless `dedup.keep_work`:
    nothing reads it after the stage. A stage killed before its commit keeps its work/ to resume from."""
    if not dedup.get(KEEP_WORK, False) and (stage_dir / "stats.json").is_file():
        shutil.rmtree(stage_dir / "work", ignore_errors=True)
