"""`python -m tokenizer_training {train,evaluate,export-hf,encode} [Hydra overrides]`.

The config is configs/tokenizer_training.yaml with the group `tokenizer` (baichuan2 | small);
everything after the command is a Hydra override, e.g.

    python -m tokenizer_training train tokenizer=small input=[out/final] out=tok
    python -m tokenizer_training encode model_file=tok/tokenizer.model input=[out/final] out=data encode.workers=2
"""
from __future__ import annotations

import sys

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from stack_common.config import config_dir, to_dataclass
from stack_common.errors import UserError, report_user_errors

from .config import AppConfig

COMMANDS = ("train", "evaluate", "export-hf", "encode")
USAGE = __doc__ + "\nShow the composed config of a command: python -m tokenizer_training COMMAND [overrides] --cfg job"


def load_config(overrides: list[str]) -> AppConfig:
    with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
        try:
            cfg = compose(config_name="tokenizer_training", overrides=overrides)
        except Exception as err:  # Hydra's override and missing-option errors are user mistakes
            raise UserError(f"bad override: {str(err).splitlines()[0]}") from None
    if isinstance(cfg.get("input"), str):  # input=DIR means input=[DIR]
        cfg.input = [cfg.input]
    return to_dataclass(cfg, AppConfig, where="tokenizer_training")


def run(command: str, cfg: AppConfig) -> None:
    if command == "train":
        from .train import train
        train(cfg)
    elif command == "evaluate":
        from .evaluate import evaluate_command
        evaluate_command(cfg)
    elif command == "export-hf":
        from .export_hf import export_command
        export_command(cfg)
    elif command == "encode":
        from .encode import encode_command
        encode_command(cfg)


@report_user_errors
def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return
    command, overrides = argv[0], argv[1:]
    if command not in COMMANDS:
        raise UserError(f"unknown command {command!r}", expected=" | ".join(COMMANDS))
    show = "--cfg" in overrides
    if show:  # `--cfg` or Hydra's `--cfg job`, as the other apps take it
        at = overrides.index("--cfg")
        overrides = overrides[:at] + overrides[at + 1 + (overrides[at + 1:at + 2] == ["job"]):]
    cfg = load_config(overrides)
    if show:
        print(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
        return
    run(command, cfg)


if __name__ == "__main__":
    main()
