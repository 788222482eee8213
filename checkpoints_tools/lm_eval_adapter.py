"""lm-eval's own Hugging Face backend (`lm_eval.models.huggingface.HFLM`) on one model directory:
an export of this project or a released Baichuan 2 checkpoint (its own modeling code through
trust_remote_code). Batched scoring; bf16 on a GPU, fp32 on CPU."""
from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import torch

from stack_common.errors import UserError

DEFAULT_BATCH_SIZE = 16


def eval_device() -> tuple[str, torch.dtype]:
    """bf16 on a GPU (as Baichuan 2 was evaluated), fp32 on CPU (bf16 matmuls are slow there)."""
    if torch.cuda.is_available():
        return "cuda", torch.bfloat16
    return "cpu", torch.float32


def hf_lm(model_dir: str | Path, batch_size: int = DEFAULT_BATCH_SIZE, max_length: int | None = None,
          device: str | None = None, dtype: torch.dtype | None = None):
    """HFLM over `model_dir` (weights, config and tokenizer all read from it)."""
    try:
        from lm_eval.models.huggingface import HFLM
    except ImportError as err:   # lm-eval's HF backend needs accelerate (lm-eval's "hf" extra)
        raise UserError(f"lm-eval's Hugging Face backend cannot be imported ({err})",
                        expected="pip install 'lm-eval[hf]' (accelerate)") from None

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise UserError("not a Hugging Face model directory: config.json is missing", file=model_dir)
    if not any((model_dir / name).is_file() for name in ("tokenizer.json", "tokenizer.model")):
        raise UserError("lm-eval needs the tokenizer in the model directory", file=model_dir,
                        expected="tokenizer.model or tokenizer.json")
    auto_device, auto_dtype = eval_device()
    return HFLM(pretrained=str(model_dir), tokenizer=str(model_dir), trust_remote_code=True,
                device=device or auto_device, dtype=dtype or auto_dtype, batch_size=batch_size,
                max_length=max_length)


@functools.lru_cache(maxsize=4)
def task_manager(include_path: str | None, tasks: tuple[str, ...]):
    """lm-eval's task index. Indexing its thousands of built-in YAMLs takes ~15 s, so when
    `include_path` holds every task asked for, only that directory is indexed; built once per
    (include_path, tasks)."""
    from lm_eval.tasks import TaskManager

    if include_path:
        local = TaskManager(include_path=include_path, include_defaults=False)
        if all(task in local.task_index for task in tasks):
            return local
        return TaskManager(include_path=include_path)
    return TaskManager()


def task_identity(task: str, manager) -> dict:
    """What a cached result of `task` depends on besides the model: the lm-eval version and the
    text of the task's YAML (local tasks included)."""
    import lm_eval

    entry = manager.task_index.get(task)
    if entry is None:
        raise UserError(f"unknown lm-eval task {task!r}", field="--tasks",
                        expected="a task name lm-eval knows (local ones through --include-path)")
    yaml_path = getattr(entry, "yaml_path", None)
    digest = (hashlib.sha256(Path(yaml_path).read_bytes()).hexdigest()
              if yaml_path and Path(yaml_path).is_file() else None)
    return {"lm_eval_version": lm_eval.__version__, "yaml": str(yaml_path) if yaml_path else None,
            "yaml_sha256": digest}


def run_task(lm, task: str, manager, num_fewshot: int | None, limit) -> dict:
    """One task (or group) through lm_eval.simple_evaluate: {"metrics": {task/metric: value},
    "configs", "versions", "n_shot"} as the harness reports them."""
    import lm_eval

    results = lm_eval.simple_evaluate(model=lm, tasks=[task], task_manager=manager,
                                      num_fewshot=num_fewshot, limit=limit, log_samples=False)
    metrics = {}
    for name, values in results["results"].items():
        for key, value in values.items():
            if "," in key and "stderr" not in key and isinstance(value, (int, float)):
                metrics[f"{name}/{key.split(',')[0]}"] = float(value)
    return {"metrics": metrics, "configs": _jsonable(results.get("configs", {})),
            "versions": _jsonable(results.get("versions", {})), "n_shot": _jsonable(results.get("n-shot", {}))}


def _jsonable(value):
    """Task configs hold functions and other objects: keep what JSON can say, name the rest."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)
