"""`carebot data curate --executor slurm` on the real local cluster (datatrove's SlurmPipelineExecutor: one job
array per stage, chained with afterok): the same buckets as the local executor with one task; a task killed with
-9, then the same command again, gives the bytes of an uninterrupted run."""
from __future__ import annotations

import random
import subprocess
import time
from pathlib import Path

import pytest

from tests.data_tools.curate.test_curate import buckets, corpus, curate, write_shards

ARGS = ["--executor", "slurm", "--partition", "debug", "--tasks", "4", "--workers", "2", "--time", "00:30:00",
        "--mem-per-cpu-gb", "1"]


def wait_done(cluster, out: Path, stage: str = "5_write", n: int = 4, timeout: float = 600) -> None:
    done, end = out / "logs" / stage / "completions", time.monotonic() + timeout
    while len(list(done.glob("*"))) < n:
        assert time.monotonic() < end, cluster.run("squeue", check=False).stdout
        time.sleep(1)


@pytest.mark.slow  # multi-process / cluster run: the slow set (.ci/run runs it)
def test_curate_on_slurm_gives_the_local_buckets(slurm_cluster, tmp_path, data_root):
    inp = write_shards(corpus(data_root, 60), tmp_path / "in")
    curate(inp, tmp_path / "local", "--tasks", "1")
    p = curate(inp, tmp_path / "slurm", *ARGS)
    assert "submitted" in p.stderr, p.stderr[-3000:]
    wait_done(slurm_cluster, tmp_path / "slurm")
    p = curate(inp, tmp_path / "slurm", *ARGS)  # all done: the report
    assert "after near-dup" in p.stdout, p.stderr[-3000:]
    assert buckets(tmp_path / "slurm") == buckets(tmp_path / "local")


def files(out: Path) -> dict[str, bytes]:
    return {str(f.relative_to(out)): f.read_bytes() for d in ("buckets", "excluded") for f in sorted((out / d).rglob("*"))
            if f.is_file()}


@pytest.mark.slow
def test_curate_slurm_task_killed_then_rerun_gives_the_same_bytes(slurm_cluster, tmp_path, data_root):
    inp = write_shards(corpus(data_root, 60), tmp_path / "in")
    curate(inp, tmp_path / "local", "--tasks", "4", "--workers", "2")
    out = tmp_path / "slurm"
    assert "submitted" in curate(inp, out, *ARGS).stderr
    pattern, end = f"launch_pickled_pipeline {out}/logs/1_score/", time.monotonic() + 600
    while not (pids := subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()):
        assert time.monotonic() < end, slurm_cluster.run("squeue", check=False).stdout
        time.sleep(0.1)
    time.sleep(random.Random().uniform(0, 1.5))
    subprocess.run(["kill", "-9", pids[0]], check=True)  # one score task, at a random point of its run
    assert "still queued or running" in curate(inp, out, *ARGS).stderr  # the other tasks still run: nothing submitted
    assert len(list((out / "logs" / "1_score" / "completions").glob("*"))) < 4  # the kill hit a running task
    while "still queued or running" in (p := curate(inp, out, *ARGS)).stderr:  # the same command, until it resubmits
        assert time.monotonic() < end, slurm_cluster.run("squeue", check=False).stdout
        time.sleep(2)
    assert "cancelling jobs" in p.stderr and "submitted" in p.stderr, p.stderr[-3000:]  # the afterok chain replaced
    wait_done(slurm_cluster, out)
    p = curate(inp, out, *ARGS)
    assert "after near-dup" in p.stdout, p.stderr[-3000:]
    assert files(out) == files(tmp_path / "local") and files(out)
