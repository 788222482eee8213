"""The README cannot drift from the code: its commands compose with the real CLIs, its
TensorBoard tags are the ones the trainer writes, and the demo runs end to end (reduced)."""
import json
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import REPO

HYDRA_APPS = ("data_pipeline", "tokenizer_training", "pretrain")


def readme_commands() -> list[list[str]]:
    """Every `python -m ...` / `torchrun ... -m ...` command in the README's bash blocks."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split(" #")[0].strip()
            if line.startswith(("python -m", "torchrun")):
                commands.append(shlex.split(line))
    return commands


def as_check(argv: list[str]) -> tuple[list[str], str]:
    """The command rewritten so it only parses and composes its arguments, and the CLI kind."""
    module_at = argv.index("-m") + 1
    module, args = argv[module_at], [a for a in argv[module_at + 1:] if a != "--multirun"]
    if module in HYDRA_APPS:
        real = "training.dry_run=true" in args   # a dry run reads no data: run it for real
        return [sys.executable, "-m", module, *args, *([] if real else ["--cfg", "job"])], "hydra"
    return [sys.executable, "-m", module, *args], "argparse"


def test_readme_lists_commands_for_every_stage():
    modules = {cmd[cmd.index("-m") + 1] for cmd in readme_commands()}
    assert modules >= {"data_pipeline", "tokenizer_training", "pretrain", "checkpoints_tools"}


def _check(argv, cwd):
    cmd, kind = as_check(argv)
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    return argv, kind, proc


# The one-line user error each checkpoints_tools command gives for its (absent) first input path.
MISSING_INPUT = {"inspect": "run directory does not exist", "batches": "run directory does not exist",
                 "seen": "run directory does not exist", "export-series": "run directory does not exist",
                 "export-hf": "checkpoint directory does not exist",
                 "import-hf": "not a Hugging Face model directory: config.json is missing",
                 "eval-series": "exports directory does not exist", "dynamics": "exports directory does not exist",
                 "make-task": "text file does not exist"}


def expected_error(argv: list[str]) -> str:
    command, path = argv[argv.index("-m") + 2: argv.index("-m") + 4]
    return f"error: {path}: {MISSING_INPUT[command]}"


def test_readme_commands_are_accepted_by_the_real_clis(tmp_path):
    """Hydra apps must compose every override (`--cfg job`); the argparse CLI must accept every
    flag and fail only on the (absent) input path, with exactly that path's one-line user error. They
    run in an empty directory, so that Hydra's run directories stay out of the repository."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda argv: _check(argv, tmp_path), readme_commands()))
    failures = []
    for argv, kind, proc in results:
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        if kind == "hydra":
            ok = proc.returncode == 0
        else:
            ok = "usage:" not in proc.stderr and proc.returncode == 2 and errors == [expected_error(argv)]
        if not ok:
            failures.append(f"{shlex.join(argv)}\n    {proc.stderr.strip()[-800:]}")
    assert not failures, "README commands the CLIs reject:\n" + "\n".join(failures)


def test_readme_tensorboard_tags_are_the_trainers():
    from pretrain.monitoring import TRAIN_TAGS, VALID_TAGS

    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## TensorBoard", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([a-z_]+/[a-z_]+)` \|", section, flags=re.M))
    assert documented == set(TRAIN_TAGS) | set(VALID_TAGS)


@pytest.mark.slow
def test_demo_small_runs_end_to_end(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "demo.py"), "--small", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "demo finished" in proc.stdout
    stats = json.loads((out / "clean" / "stats.json").read_text())
    assert stats["reconciled"] and stats["docs_kept"] > 0 and stats["quarantined"] == 6
    series = json.loads((out / "exports" / "eval" / "series.json").read_text())
    rows = series["rows"] if isinstance(series, dict) else series
    assert len(rows) >= 2
    first, last = rows[0], rows[-1]
    for key in (k for k in first if k.startswith("ppl/")):
        assert last[key] < first[key], f"held-out {key} should fall during training: {first[key]} -> {last[key]}"
    assert proc.stdout.count("generate      :") == 2
    # the series a researcher studies: step 0 and log-spaced steps kept, batches named, dynamics drawn
    kept = sorted(p.name for p in (out / "run" / "checkpoints").glob("iter_*"))
    assert {"iter_0000000", "iter_0000001", "iter_0000002", "iter_0000004", "iter_0000008"} <= set(kept)
    assert first["tokens"] == 0 and all("training_state.json" in {f.name for f in e.iterdir()}
                                         for e in (out / "exports").iterdir() if (e / "config.json").is_file())
    assert "step 4" in proc.stdout and "source=" in proc.stdout
    assert (out / "exports" / "dynamics" / "dynamics.csv").is_file()
