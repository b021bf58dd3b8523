"""A REAL local SLURM cluster for the launch tests: 3 emulated nodes with 8 fake GPUs each (the 8B layout for
`sbatch --test-only`), owned by this session and torn down after it. Installs Debian's packages if missing."""
from __future__ import annotations

import os

import pytest

from launch.local_cluster import ClusterUnavailable, LocalCluster


@pytest.fixture(scope="session")
def slurm_cluster():
    cluster = LocalCluster(nodes=3, gpus=8, cpus=16)
    try:
        cluster.start()
    except ClusterUnavailable as e:
        cluster.stop()
        pytest.skip(f"no local SLURM cluster: {e}")
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = cluster.env["SLURM_CONF"]  # sbatch / scontrol in this process and its children
    try:
        yield cluster
    finally:
        cluster.stop()
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old
