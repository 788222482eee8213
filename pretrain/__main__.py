"""`python -m pretrain [hydra overrides]`, also `torchrun --nproc-per-node N -m pretrain ...`.

    python -m pretrain --cfg job                      # print the resolved config
    python -m pretrain training.dry_run=true          # parameter counts + memory per rank
    torchrun --nproc-per-node 2 -m pretrain parallel=tp2 data.paths=[OUT/en_text_document] \
        training.train_iters=300 checkpoint.dir=runs/demo
"""
from __future__ import annotations

import os
import sys

import hydra
from omegaconf import DictConfig

from stack_common.config import config_dir
from stack_common.errors import USER_ERROR_EXIT, UserError, report_user_errors


def export_slurm_env() -> None:
    """Under srun/submitit without torchrun: take rank and world from SLURM_* variables."""
    if "RANK" in os.environ or "SLURM_PROCID" not in os.environ:
        return
    nodes = os.environ.get("SLURM_JOB_NODELIST", os.environ.get("SLURM_NODELIST", "127.0.0.1"))
    os.environ["RANK"] = os.environ["SLURM_PROCID"]
    os.environ["WORLD_SIZE"] = os.environ.get("SLURM_NTASKS", "1")
    os.environ["LOCAL_RANK"] = os.environ.get("SLURM_LOCALID", "0")
    os.environ.setdefault("MASTER_ADDR", first_host(nodes))
    os.environ.setdefault("MASTER_PORT", str(20000 + int(os.environ.get("SLURM_JOB_ID", "0")) % 20000))


def first_host(nodelist: str) -> str:
    """First host of a Slurm node list such as `gpu[012-015,020],cpu1` (without scontrol)."""
    head = nodelist.split(",")[0]
    if "[" not in head:
        return head
    prefix, ranges = head.split("[", 1)
    return prefix + ranges.split("-")[0].split(",")[0].rstrip("]")


def quiet_errors(fn):
    """Ranks other than 0 find the same config errors; only rank 0 prints them."""
    def wrapper(*args):
        try:
            return fn(*args)
        except UserError:
            sys.exit(USER_ERROR_EXIT)
    return wrapper


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="pretrain")
def app(cfg: DictConfig) -> None:
    from pretrain.train import run

    export_slurm_env()
    code = report_user_errors(run)(cfg) if os.environ.get("RANK", "0") == "0" else quiet_errors(run)(cfg)
    if code:
        sys.exit(code)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
