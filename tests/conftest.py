import contextlib
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



class RayTestCluster:
    """Worker nodes of 2 CPUs and 1 GiB of task memory; tasks ask for the whole 1 GiB, so a node runs
    one task at a time whatever its CPUs (the memory resource, not the CPU count, limits it)."""
    NODE = {"num_cpus": 2, "memory": 1 << 30}
    TASK_MEMORY_MB = 1024

    def __init__(self, cluster):
        self.cluster = cluster
        self.address = cluster.address

    def overrides(self) -> list[str]:
        """Hydra overrides that run `python -m data_pipeline` on this cluster."""
        return ["executor=ray", f"ray_address={self.address}", f"ray.memory_per_task_mb={self.TASK_MEMORY_MB}"]

    def add_node(self):
        node = self.cluster.add_node(**self.NODE)
        self.cluster.wait_for_nodes()
        return node


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """A Ray cluster on this machine, started once per session and shared by every Ray test: a head
    with 0 CPUs (no task runs beside the driver) and two worker nodes. Health checks every 0.5 s
    notice a removed node within about 1.5 s."""
    import ray
    from ray.cluster_utils import Cluster

    from stack_common.tasks import RayConfig, configure_ray, ensure_ray

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": False,
        "_system_config": {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500,
                           "health_check_failure_threshold": 3}})
    test_cluster = RayTestCluster(cluster)
    for _ in range(2):
        cluster.add_node(**RayTestCluster.NODE)
    cluster.wait_for_nodes()
    config = RayConfig(memory_per_task_mb=RayTestCluster.TASK_MEMORY_MB)
    configure_ray(config)
    # Ray adds the driver's working directory to every worker's sys.path; connecting from an empty
    # one leaves the packages to the runtime_env (py_modules), as on nodes that share no paths.
    with contextlib.chdir(tmp_path_factory.mktemp("ray_driver_cwd")):
        ensure_ray(cluster.address, 0, config)
    yield test_cluster
    configure_ray(RayConfig())
    ray.shutdown()
    cluster.shutdown()
