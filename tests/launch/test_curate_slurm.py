"""`carebot data curate --executor slurm` on the real local cluster (datatrove's SlurmPipelineExecutor: one job
array per stage, chained with afterok): the same buckets as the local executor with one task."""
from __future__ import annotations

import time

from tests.data_tools.curate.test_curate import buckets, corpus, curate, write_shards


def test_curate_on_slurm_gives_the_local_buckets(slurm_cluster, tmp_path, data_root):
    inp = write_shards(corpus(data_root, 60), tmp_path / "in")
    curate(inp, tmp_path / "local", "--tasks", "1")
    args = ["--executor", "slurm", "--partition", "debug", "--tasks", "4", "--workers", "2", "--time", "00:30:00",
            "--mem-per-cpu-gb", "1"]
    p = curate(inp, tmp_path / "slurm", *args)
    assert "submitted" in p.stderr, p.stderr[-3000:]
    done, end = tmp_path / "slurm" / "logs" / "4_write" / "completions", time.monotonic() + 600
    while len(list(done.glob("*"))) < 4:
        assert time.monotonic() < end, slurm_cluster.run("squeue", check=False).stdout
        time.sleep(1)
    p = curate(inp, tmp_path / "slurm", *args)  # all done: the report
    assert "after near-dup" in p.stdout, p.stderr[-3000:]
    assert buckets(tmp_path / "slurm") == buckets(tmp_path / "local")
