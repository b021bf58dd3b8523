"""A REAL local SLURM cluster for the launch tests: 4 emulated nodes with 8 fake GPUs each (3 x 8 is the 8B CPT layout for
`sbatch --test-only`), owned by this session and torn down after it. Needs Debian's slurm packages
(`bash tests/fixtures/install_slurm.sh`); without them the SLURM tests skip, unless CAREBOT_REQUIRE_SLURM=1 (CI)
makes that an error."""
from __future__ import annotations

import os

import pytest

from tests.fixtures.local_cluster import ClusterUnavailable, LocalCluster


@pytest.fixture(scope="session")
def slurm_cluster():
    cluster = LocalCluster(nodes=4, gpus=8, cpus=16)
    try:
        cluster.start()
    except ClusterUnavailable as e:
        cluster.stop()
        if os.environ.get("CAREBOT_REQUIRE_SLURM") == "1":
            pytest.fail(f"no local SLURM cluster: {e}")
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


@pytest.fixture(scope="session")
def launch_cpt_base(data_root, small_tokenizer_dir) -> list[str]:
    """Tiny-CPT overrides on real text (the same .bin/.idx buckets tests/pretrain builds, shared cache)."""
    from tests.pretrain.conftest import cpt_prefixes  # noqa: F401  (same builder, same cache dir)

    p = cpt_prefixes.__wrapped__(data_root, small_tokenizer_dir)
    return [f"data.tokenizer={small_tokenizer_dir}",
            f"data.data_path=[0.5, {p['medical_en']}, 0.3, {p['medical_zh']}, 0.2, {p['general_en']}]",
            "data.seq_length=64", "train.micro_batch_size=2", "train.global_batch_size=8",
            "train.eval_interval=0", "train.log_interval=5", "train.tensorboard=false", "checkpoint.save_interval=1000"]
