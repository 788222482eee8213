import os
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("BC_NO_PROGRESS", "1")


@pytest.fixture(autouse=True)
def seeded_global_rngs():
    """Every test starts from the same global RNG state, whatever ran before it (tests also seed
    their own draws; this covers library code that draws from the global generators)."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def raw_web(tmp_path_factory) -> Path:
    """The generated raw-web layer of the bundled sample corpus (built once per session)."""
    from stack_common.sample_corpus import build_raw_web

    out = tmp_path_factory.mktemp("raw_web")
    build_raw_web(out)
    return out


@pytest.fixture(scope="session")
def python() -> str:
    return sys.executable
