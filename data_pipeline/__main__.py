"""`python -m data_pipeline`: a Hydra app (primary config `configs/data_pipeline.yaml`).

    python -m data_pipeline input='raw/*.jsonl.gz' output=out/ stages=[normalize,filter,quality] \
        quality.model=quality.bin workers=4 [executor=ray ray_address=auto]
    python -m data_pipeline task=quality_train quality_train.positive=[clean/*.parquet] \
        quality_train.negative=[spam/*.jsonl] quality_train.output=quality.bin
    python -m data_pipeline task=harmful_train harmful_train.positive=[harmful.jsonl] \
        harmful_train.negative=[safe.jsonl] harmful_train.output=harmful.bin
"""
from __future__ import annotations

import json

import hydra
from omegaconf import DictConfig, OmegaConf

from stack_common.config import config_dir, to_dataclass
from stack_common.errors import ConfigError, report_user_errors
from stack_common.logging import get_logger

from .config import PipelineConfig

log = get_logger("data_pipeline")


def to_config(cfg: DictConfig | dict) -> PipelineConfig:
    plain = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    plain.pop("hydra", None)
    for key in ("input",):
        if isinstance(plain.get(key), str):
            plain[key] = [plain[key]]
    for section in ("quality_train", "harmful_train"):
        for key in ("positive", "negative", "raw_sample"):
            if isinstance(plain.get(section, {}).get(key), str):
                plain[section][key] = [plain[section][key]]
    for section, key in (("harmful", "word_lists"), ("harmful", "url_lists"), ("decontaminate", "eval_sets")):
        named = plain.get(section, {}).get(key) or {}
        if not isinstance(named, dict):
            raise ConfigError([f"{section}.{key}: a mapping name -> files, e.g. {{gsm8k: [gsm8k_test.jsonl]}}, "
                               f"got {named!r}"])
        plain.setdefault(section, {})[key] = {k: [v] if isinstance(v, str) else v for k, v in named.items()}
    plain["dedup"] = plain.get("dedup") or {}
    return to_dataclass(plain, PipelineConfig)


def load_config(overrides: list[str] | None = None) -> PipelineConfig:
    """The config `python -m data_pipeline <overrides>` would run with (for tests and scripts)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
        return to_config(compose(config_name="data_pipeline", overrides=list(overrides or [])))


def execute(cfg: PipelineConfig) -> dict:
    if cfg.task == "quality_train":
        from .quality import train_quality_model

        report = train_quality_model(cfg.quality_train, cfg.reader)
        log.info("quality model %s (%d bytes, sha256 %s): held-out precision %.3f recall %.3f AUC %.3f (AUC against %s)",
                 report["model"], report["bytes"], report["sha256"][:12], report["precision"], report["recall"],
                 report["auc"], ", ".join(f"{k} {v:.3f}" for k, v in report["heldout_auc"].items()))
        print(json.dumps(report, indent=2))
        return report
    if cfg.task == "harmful_train":
        from .harmful import HARMFUL, SAFE
        from .quality import train_quality_model

        report = train_quality_model(cfg.harmful_train, cfg.reader, labels=(HARMFUL, SAFE), where="harmful_train")
        log.info("harmful-content model %s: held-out precision %.3f recall %.3f AUC %.3f", report["model"],
                 report["precision"], report["recall"], report["auc"])
        print(json.dumps(report, indent=2))
        return report
    if cfg.task != "run":
        raise ConfigError([f"task: 'run', 'quality_train' or 'harmful_train', got '{cfg.task}'"])
    from .runner import run_pipeline

    stats = run_pipeline(cfg)
    print(json.dumps({k: stats[k] for k in ("records_read", "docs_kept", "docs_excluded", "quarantined",
                                            "reconciled", "final_dir")}))
    return stats


@report_user_errors
def _run(cfg: DictConfig) -> None:
    execute(to_config(cfg))


@hydra.main(config_path=str(config_dir()), config_name="data_pipeline", version_base=None)
def _hydra_main(cfg: DictConfig) -> None:
    _run(cfg)


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
