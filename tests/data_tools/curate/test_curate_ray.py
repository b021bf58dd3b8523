"""`carebot data curate --executor ray` on a real local Ray runtime (2.60), started by the command itself inside a
network namespace that has loopback alone (Ray looks for a routable address and listens on all interfaces: here
it can reach nothing but 127.0.0.1), with the domain classifier and the DataRater loaded in its workers. Its
buckets and exclusions equal the local executor's byte for byte (same task layout: each task reads the same
shard and writes the same files); a worker killed mid-task loses and duplicates nothing; a bad record is one
error line and exit 2 (datatrove's Ray executor alone would wait for the failed task forever)."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.data_tools.curate.test_curate import corpus, curate, models, write_shards  # noqa: F401  (fixture)
from tests.helpers import REPO


def _ray_ready() -> str | None:
    try:
        import ray  # noqa: F401
    except ImportError:
        return "ray is not installed (pip install -e '.[ray]')"
    p = subprocess.run(["unshare", "-n", "true"], capture_output=True)
    return None if p.returncode == 0 else "cannot make a network namespace (unshare -n needs root)"


WHY = _ray_ready()
if WHY and os.environ.get("CAREBOT_REQUIRE_RAY"):
    raise RuntimeError(f"CAREBOT_REQUIRE_RAY is set but {WHY}")
pytestmark = [pytest.mark.skipif(WHY is not None, reason=WHY or ""),
              pytest.mark.slow]  # a Ray runtime and three pipelines: the slow set (.ci/run runs it)


def ray_curate(inp: Path, out: Path, *args: str) -> subprocess.Popen:
    """The command in a network namespace of its own with only loopback up; Ray's local instance lives and dies
    inside it."""
    cmd = " ".join([sys.executable, "-m", "carebot.cli", "data", "curate", "--input", str(inp), "--out", str(out),
                    "--executor", "ray", *args])
    return subprocess.Popen(["unshare", "-n", "bash", "-c", f"ip link set lo up && exec {cmd}"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)


def finish(p: subprocess.Popen, timeout: float = 600) -> tuple[int, str]:
    try:
        _, err = p.communicate(timeout=timeout)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    return p.returncode, err


def digests(out: Path) -> dict[str, str]:
    return {str(f.relative_to(out)): hashlib.sha256(f.read_bytes()).hexdigest()
            for d in ("buckets", "excluded") for f in sorted((out / d).rglob("*.jsonl"))}


def docs_out(out: Path) -> int:
    return sum(len(f.read_text(encoding="utf-8").splitlines()) for d in ("buckets", "excluded")
               for f in (out / d).rglob("*.jsonl"))


def ray_workers() -> list[int]:
    """PIDs of Ray worker processes running a datatrove task (their title is ray::RankWorker...)."""
    out = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                if b"ray::RankWorker" in Path(f"/proc/{p}/cmdline").read_bytes():
                    out.append(int(p))
            except OSError:
                pass
    return out


@pytest.fixture(scope="module")
def shards(tmp_path_factory, data_root) -> Path:
    return write_shards(corpus(data_root, 40), tmp_path_factory.mktemp("ray") / "in", 4)


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, shards, models) -> Path:  # noqa: F811
    out = tmp_path_factory.mktemp("ray") / "local"
    curate(shards, out, "--tasks", "4", "--workers", "2", "--no-decontam", *models)
    return out


def test_ray_buckets_equal_the_local_executors_with_the_encoder_heads(tmp_path, shards, models, local_run):  # noqa: F811
    rc, err = finish(ray_curate(shards, tmp_path / "ray", "--tasks", "4", "--workers", "2", "--no-decontam", *models))
    assert rc == 0, err[-3000:]
    assert digests(tmp_path / "ray") == digests(local_run) and len(digests(local_run)) >= 8
    rep = json.loads((tmp_path / "ray" / "report.json").read_text())
    loc = json.loads((local_run / "report.json").read_text())
    for k in ("funnel", "drops", "buckets", "near_dup_clusters", "pii_redacted", "medical_hq_cut"):
        assert rep[k] == loc[k], k
    assert sum(rep["buckets"].values()) > 0 and any(k.startswith("medical") for k in rep["buckets"])


def test_a_killed_ray_worker_loses_and_duplicates_nothing(tmp_path, shards, models, local_run):  # noqa: F811
    out = tmp_path / "ray"
    p = ray_curate(shards, out, "--tasks", "4", "--workers", "2", "--no-decontam", *models)
    killed, end = [], time.monotonic() + 300
    try:
        while not killed and time.monotonic() < end and p.poll() is None:
            logs = list((out / "logs" / "1_score" / "logs").glob("task_*.log"))
            done = list((out / "logs" / "1_score" / "completions").glob("*"))
            workers = ray_workers()
            if logs and workers and len(done) < 4:  # stage 1 under way: a task is running in a worker
                os.kill(workers[0], signal.SIGKILL)
                killed.append(workers[0])
            time.sleep(0.1)
    except BaseException:
        os.killpg(p.pid, signal.SIGKILL)
        raise
    assert killed, "no Ray worker was seen running a task"
    rc, err = finish(p)
    print(f"[ray kill] worker {killed[0]} killed in stage 1; the run itself exited {rc}")
    if rc != 0:  # datatrove retries a crashed worker's task itself; if it gave up, the rerun finishes
        rc, err = finish(ray_curate(shards, out, "--tasks", "4", "--workers", "2", "--no-decontam", *models))
    assert rc == 0, err[-3000:]
    assert digests(out) == digests(local_run)  # nothing lost, nothing written twice
    assert docs_out(out) == docs_out(local_run) == 160  # every input document in a bucket or an exclusion, once


def test_bad_record_under_ray_is_one_line_not_a_hang(tmp_path, data_root):
    inp = write_shards(corpus(data_root, 5), tmp_path / "in", 2)
    with (inp / "shard1.jsonl").open("a") as f:
        f.write('{"id": "x", "text": 42}\n')
    t0 = time.monotonic()
    rc, err = finish(ray_curate(inp, tmp_path / "o", "--tasks", "2", "--workers", "2", "--no-decontam"), timeout=300)
    errors = [x for x in err.splitlines() if "error:" in x]
    assert rc == 2 and len(errors) == 1 and "shard1.jsonl:11: 'text' is int" in errors[0], err[-3000:]
    assert time.monotonic() - t0 < 240 and not (tmp_path / "o" / "buckets").exists()
