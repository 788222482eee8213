"""What a run is keyed on: document ids unique across folders, model files pinned by content on
resume, and rule thresholds that are typed (a misspelt key is an error, not a disabled check)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from data_pipeline.__main__ import execute, load_config
from data_pipeline.filters import build_rule_sets, check_rules
from data_pipeline.runner import check_run_config
from stack_common.errors import ConfigError, UserError
from stack_common.shards import read_table

TEXT = "A plain English sentence that is long enough to be kept by the normalize stage."


def kept_ids(out: Path) -> list[str]:
    return read_table(out / "final", columns=["id"])["id"].to_pylist()


def test_fallback_ids_are_unique_across_folders(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / "in" / folder).mkdir(parents=True)
        lines = [json.dumps({"text": f"{TEXT} {folder} {i}"}) for i in range(3)]
        (tmp_path / "in" / folder / "part-0.jsonl").write_text("\n".join(lines) + "\n")
    execute(load_config([f"input={tmp_path}/in", f"output={tmp_path}/out", "stages=[normalize]"]))
    ids = kept_ids(tmp_path / "out")
    assert sorted(ids) == [f"{folder}/part-0.jsonl:{line}" for folder in "ab" for line in (1, 2, 3)]


def test_single_input_keeps_file_name_ids(tmp_path):
    (tmp_path / "part-0.jsonl").write_text(json.dumps({"text": TEXT}) + "\n" + json.dumps({"id": "x7", "text": TEXT}) + "\n")
    execute(load_config([f"input={tmp_path}/part-0.jsonl", f"output={tmp_path}/out", "stages=[normalize]"]))
    assert sorted(kept_ids(tmp_path / "out")) == ["part-0.jsonl:1", "x7"]


def quality_cfg(tmp_path: Path, model: Path, *extra: str):
    return load_config([f"input={tmp_path}/in.jsonl", f"output={tmp_path}/out", "stages=[normalize,quality]",
                        f"quality.model={model}", *extra])


def test_changed_model_file_is_refused_on_resume(tmp_path):
    (tmp_path / "in.jsonl").write_text(json.dumps({"text": TEXT}) + "\n")
    model = tmp_path / "quality.bin"
    model.write_bytes(b"model version one")
    cfg = quality_cfg(tmp_path, model)
    stages = ["normalize", "annotate", "quality"]
    check_run_config(tmp_path / "out", cfg, [tmp_path / "in.jsonl"], stages)
    recorded = json.loads((tmp_path / "out" / "run_config.json").read_text())["model_sha256"]
    assert sorted(recorded) == ["lang.model", "quality.model"]
    assert recorded["quality.model"] == hashlib.sha256(b"model version one").hexdigest()

    check_run_config(tmp_path / "out", cfg, [tmp_path / "in.jsonl"], stages)       # same file: resumes
    model.write_bytes(b"model version two")                                       # same path, other model
    with pytest.raises(UserError) as err:
        check_run_config(tmp_path / "out", cfg, [tmp_path / "in.jsonl"], stages)
    assert "quality.model changed since this run started" in str(err.value) and str(model) in str(err.value)

    check_run_config(tmp_path / "out", quality_cfg(tmp_path, model, "overwrite=true"), [tmp_path / "in.jsonl"], stages)
    assert json.loads((tmp_path / "out" / "run_config.json").read_text())["model_sha256"] != recorded


def test_model_of_an_appended_stage_is_not_a_change(tmp_path):
    (tmp_path / "in.jsonl").write_text(json.dumps({"text": TEXT}) + "\n")
    model = tmp_path / "quality.bin"
    model.write_bytes(b"model")
    cfg = quality_cfg(tmp_path, model)
    check_run_config(tmp_path / "out", cfg, [tmp_path / "in.jsonl"], ["normalize"])
    check_run_config(tmp_path / "out", cfg, [tmp_path / "in.jsonl"], ["normalize", "annotate", "quality"])
    assert "quality.model" in json.loads((tmp_path / "out" / "run_config.json").read_text())["model_sha256"]


def test_input_rewritten_mid_run_is_refused_on_resume(tmp_path):
    """A run resumed after its input was rewritten would mix the units done on the old file with ones
    read from the new; the same file (size and modification time) resumes, an older run_config without
    the record is taken as it is."""
    raw = tmp_path / "in.jsonl"
    raw.write_text(json.dumps({"text": TEXT}) + "\n")
    out = tmp_path / "out"
    overrides = [f"input={raw}", f"output={out}", "stages=[normalize]"]
    execute(load_config(overrides))
    recorded = json.loads((out / "run_config.json").read_text())
    assert recorded["input_stat"] == [[raw.stat().st_size, raw.stat().st_mtime_ns]]
    execute(load_config(overrides))                                     # unchanged: resumes

    stat = raw.stat()
    raw.write_text(json.dumps({"text": TEXT.upper()}) + "\n")          # same size, new content and time
    assert raw.stat().st_size == stat.st_size
    size = stat.st_size
    with pytest.raises(UserError, match=rf"input file changed since this run started \({size} -> {size} bytes") as err:
        execute(load_config(overrides))
    assert str(raw) in str(err.value)
    raw.write_text(json.dumps({"text": TEXT + " More."}) + "\n")
    with pytest.raises(UserError, match=f"{size} -> {size + 6} bytes"):
        execute(load_config(overrides))

    legacy = {k: v for k, v in recorded.items() if k != "input_stat"}   # written before input_stat existed
    (out / "run_config.json").write_text(json.dumps(legacy))
    execute(load_config(overrides))
    assert json.loads((out / "run_config.json").read_text())["input_stat"] == [[size + 6, raw.stat().st_mtime_ns]]
    execute(load_config([*overrides, "overwrite=true"]))              # and overwrite=true always starts anew


@pytest.mark.parametrize("rules,message", [
    ({"en": {"filter": {"gopher_quality": {"min_word": 50}}}},
     "rules.en.filter.gopher_quality.min_word: Key 'min_word' not in"),
    ({"zh": {"filter": {"repetition": {"max_char_run": "ten"}}}}, "rules.zh.filter.repetition.max_char_run:"),
    ({"zh": {"filter": {"repetition": {"max_dup_ngram_char_ratio": [[10, 1.5]]}}}},
     "rules.zh.filter.repetition.max_dup_ngram_char_ratio: each item is [n >= 1, fraction in [0, 1]]"),
    ({"en": {"filters": {}}}, "rules.en.filters: unknown section"),
    ({"en": {"filter": {"gopher": {"min_words": 5}}}}, "rules.en.filter.gopher: unknown rule"),
])
def test_rule_typos_are_errors(rules, message):
    with pytest.raises(ConfigError) as err:
        check_rules(rules)
    assert message in str(err.value)


def test_typed_thresholds_reach_the_rule():
    """Values are converted to the declared types and unset thresholds are None (not checked)."""
    rule_set = build_rule_sets({"zh": {"filter": {"length": {"min_chars": "30"}}}})["zh"]
    (_, params), = rule_set.rules
    assert params == {"min_chars": 30, "max_chars": None}
    assert rule_set("短文本。") == "length.min_chars"


def test_misspelt_threshold_fails_the_run_before_any_work(tmp_path):
    (tmp_path / "in.jsonl").write_text(json.dumps({"text": TEXT}) + "\n")
    cfg = load_config([f"input={tmp_path}/in.jsonl", f"output={tmp_path}/out",
                       "+rules.en.filter.gopher_quality.min_word=10"])
    with pytest.raises(ConfigError, match="rules.en.filter.gopher_quality.min_word"):
        execute(cfg)
    assert not (tmp_path / "out" / "stages").exists()


def test_misspelt_clean_lines_key_fails_at_start_up(tmp_path):
    (tmp_path / "in.jsonl").write_text(json.dumps({"text": TEXT}) + "\n")
    cfg = load_config([f"input={tmp_path}/in.jsonl", f"output={tmp_path}/out", "stages=[normalize,annotate,clean_lines]",
                       "+rules.en.clean_lines.max_word_char=10"])
    with pytest.raises(ConfigError, match="rules.en.clean_lines.max_word_char"):
        execute(cfg)
    assert not (tmp_path / "out" / "stages").exists()


def test_changed_language_model_file_is_refused_on_resume(tmp_path):
    (tmp_path / "in.jsonl").write_text(json.dumps({"text": TEXT}) + "\n")
    lid = tmp_path / "lid.bin"
    lid.write_bytes(b"language model one")
    cfg = load_config([f"input={tmp_path}/in.jsonl", f"output={tmp_path}/out", "lang.model=fasttext",
                       f"lang.fasttext_model={lid}"])
    stages = ["normalize", "annotate"]
    check_run_config(tmp_path / "out", cfg, [tmp_path / "in.jsonl"], stages)
    lid.write_bytes(b"language model two")
    with pytest.raises(UserError, match="lang.model changed since this run started") as err:
        check_run_config(tmp_path / "out", cfg, [tmp_path / "in.jsonl"], stages)
    assert str(lid) in str(err.value)
