"""Config helpers: locate the Hydra config tree, turn DictConfigs into typed dataclasses,
and collect every violation before reporting (one line each)."""
from __future__ import annotations

import os
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, Type, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import ConfigError

T = TypeVar("T")
REPO_ROOT = Path(__file__).resolve().parents[1]


def config_dir() -> Path:
    """The Hydra config tree: $BC_CONFIG_DIR, else `configs/` at the repository root."""
    return Path(os.environ.get("BC_CONFIG_DIR", REPO_ROOT / "configs")).resolve()


def to_dataclass(cfg: DictConfig | dict, cls: Type[T], where: str = "") -> T:
    """Validate `cfg` against the structured dataclass `cls` (unknown keys, wrong types)."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(cls), cfg)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        msg = str(err).splitlines()[0]
        key = getattr(err, "full_key", None)
        prefix = f"{where}.{key}" if where and key else (key or where)
        raise ConfigError([f"{prefix}: {msg}" if prefix else msg]) from None


class Checks:
    """Collect config violations, then raise them together as one ConfigError."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def require(self, condition: bool, message: str) -> bool:
        if not condition:
            self.problems.append(message)
        return condition

    def path_exists(self, path: str | os.PathLike, what: str) -> bool:
        return self.require(Path(path).exists(), f"{what}: path does not exist: {path}")

    def raise_if_any(self) -> None:
        if self.problems:
            raise ConfigError(self.problems)


def as_plain(obj: Any) -> Any:
    """A dataclass or DictConfig as plain JSON-able Python (for manifests and checkpoints)."""
    if isinstance(obj, DictConfig):
        return OmegaConf.to_container(obj, resolve=True)
    if is_dataclass(obj):
        return {f.name: as_plain(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [as_plain(x) for x in obj]
    if isinstance(obj, dict):
        return {k: as_plain(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj
