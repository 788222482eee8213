"""`make-task`: a local lm-eval task from held-out text, for machines that cannot download the
benchmark sets (C-Eval, CMMLU, MMLU come from the Hugging Face hub).

A cloze task: each item is the start of a line, and the choices are its true ending and the
endings of other lines; accuracy is how often the model gives the true ending the highest
log-likelihood. The task directory holds the data (JSONL) and the YAML, and is passed to
eval-series as `--include-path`."""
from __future__ import annotations

import json
import random
from pathlib import Path

from stack_common.atomic import atomic_write_text
from stack_common.errors import UserError

MIN_CHARS, MAX_CHARS = 24, 200   # long lines would not fit a small model's window


def cloze_items(text: str, n_items: int, n_choices: int, seed: int) -> list[dict]:
    """Items from the lines of `text` of MIN_CHARS to MAX_CHARS characters: the first 60% of a line
    (cut at a space when there is one) as context, its rest and other lines' rests as choices."""
    lines = [line.strip() for line in text.splitlines() if MIN_CHARS <= len(line.strip()) <= MAX_CHARS]
    splits = []
    for line in dict.fromkeys(lines):
        cut = int(len(line) * 0.6)
        space = line.rfind(" ", 0, cut)
        cut = space if space > len(line) // 3 else cut
        splits.append((line[:cut], line[cut:]))
    if len(splits) < n_choices:
        raise UserError(f"{len(splits)} usable lines, need at least {n_choices}",
                        expected=f"lines of {MIN_CHARS} to {MAX_CHARS} characters")
    rng = random.Random(seed)
    picked = rng.sample(range(len(splits)), min(n_items, len(splits)))
    items = []
    for i in picked:
        others = rng.sample([j for j in range(len(splits)) if j != i], n_choices - 1)
        choices = [splits[i][1]] + [splits[j][1] for j in others]
        order = list(range(n_choices))
        rng.shuffle(order)
        items.append({"context": splits[i][0], "choices": [choices[k] for k in order],
                      "label": order.index(0)})
    return items


def write_cloze_task(text_file: str | Path, out_dir: str | Path, name: str, n_items: int = 100,
                     n_choices: int = 4, seed: int = 0) -> Path:
    """Write OUT/NAME.jsonl and OUT/NAME.yaml; returns the YAML's path."""
    text_file, out_dir = Path(text_file), Path(out_dir)
    if not text_file.is_file():
        raise UserError("text file does not exist", file=text_file)
    if not name.replace("_", "").isalnum():
        raise UserError(f"task name {name!r} must be letters, digits and _", field="--name")
    items = cloze_items(text_file.read_text(encoding="utf-8"), n_items, n_choices, seed)
    data = out_dir / f"{name}.jsonl"
    atomic_write_text(data, "".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items))
    yaml_path = out_dir / f"{name}.yaml"
    atomic_write_text(yaml_path, f"""task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {json.dumps(str(data.resolve()))}
output_type: multiple_choice
test_split: test
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
target_delimiter: ""
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
  source: {json.dumps(str(text_file.resolve()))}
""")
    return yaml_path
