"""`carebot launch` on a REAL local SLURM cluster (tests/launch/conftest.py): tiny CPT over 2 emulated nodes
with torchrun rendezvous, a 3-stage afterok chain, USR1 -> checkpoint -> requeue -> exact resume, a data job
array, and `sbatch --test-only` on every 8B script. All jobs are submitted at once and run side by side."""
from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest

from launch import pipeline, slurm, slurm_cli
from launch.slurm import SlurmConfig, after_run, render_array, render_train
from carebot.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
STEPS = 30  # the chain's stable stage and the USR1 job: same config, compared step by step


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def cpu_job(tmp: Path, **kw) -> SlurmConfig:
    return SlurmConfig(nodes=kw.pop("nodes", 1), workdir=str(REPO), log_dir=str(tmp / "logs"), time="01:00:00",
                       signal_seconds=60, **kw)


def launch_cli(*argv: str) -> str:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert slurm_cli.main(list(argv)) == 0
    return buf.getvalue()


@pytest.fixture(scope="module")
def jobs(slurm_cluster, launch_cpt_base, tmp_path_factory, data_root) -> dict:
    """Submit every job up front: the 4-node cluster runs them side by side (2 cores: wall time, not CPU)."""
    root = tmp_path_factory.mktemp("launch")
    base = launch_cpt_base
    # 1. tiny CPT over 2 nodes x 1 task: one torchrun per node, rendezvous on node1's address
    s2 = cpu_job(root, nodes=2)
    r = render_train(["tiny_stable_cpt.yaml"], base + [f"output_dir={root}/two_nodes", "train.train_steps=10"], s2,
                     "cpt-2nodes")
    two = slurm.sbatch(slurm.write_script(r, s2))
    # 2. stable -> boost -> convert with afterok, through the CLI
    out = launch_cli("pipeline", "--stages", "stable,boost,convert", "--recipe", "stable=tiny_stable_cpt.yaml",
                     "--recipe", "boost=tiny_boost_cpt.yaml", "--layout", "stable=1x0", "--layout", "boost=1x0",
                     *[f"--set=stable:{o}" for o in base + [f"output_dir={root}/stable", f"train.train_steps={STEPS}"]],
                     *[f"--set=boost:{o}" for o in base + [f"output_dir={root}/boost", "train.train_steps=3"]],
                     "--time", "01:00:00", "--signal-seconds", "60", "--workdir", str(REPO),
                     "--log-dir", str(root / "logs"), "--name-prefix", "chain-")
    chain = re.findall(r"^(chain-\d-\w+): job (\d+)", out, re.M)
    # 3. the same run as the chain's stable stage, to be interrupted with USR1
    s1 = cpu_job(root)
    r = render_train(["tiny_stable_cpt.yaml"], base + [f"output_dir={root}/usr1", f"train.train_steps={STEPS}"], s1,
                     "cpt-usr1")
    usr1 = slurm.sbatch(slurm.write_script(r, s1))
    signalled: dict = {}
    watcher = threading.Thread(target=_interrupt, args=(slurm_cluster, usr1, root / "usr1", signalled), daemon=True)
    watcher.start()
    # 4. a data tool as a job array over two real shards
    shards = []
    for i, rel in enumerate(["dialogue/medquad_en_sample.jsonl", "general/wikitext2_paragraphs_en.jsonl"]):
        shards.append(root / f"shard{i}.jsonl")
        shards[-1].write_text("".join((data_root / rel).read_text(encoding="utf-8").splitlines(True)[:40]))
    arr = launch_cli("data", "rules", "--shards", *map(str, shards), "--workdir", str(REPO), "--log-dir",
                     str(root / "logs"), "--time", "00:30:00", "--", "--input", "{shard}", "--out",
                     f"{root}/rules/{{name}}", "--no-progress")
    array = re.search(r"array job (\d+)", arr).group(1)
    return {"root": root, "two": two, "chain": chain, "usr1": usr1, "array": array, "shards": shards,
            "watcher": watcher, "signalled": signalled}


def _job_pythons(out: Path) -> list[int]:
    """PIDs of the job's Python processes (torchrun, trainer): their command lines name its output dir."""
    pids = []
    for d in Path("/proc").iterdir():
        try:
            argv = (d / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if d.name.isdigit() and "python" in Path(argv[0].decode()).name and f"output_dir={out}".encode() in argv:
            pids.append(int(d.name))
    return pids


def _pending(pid: int, sig: int) -> bool:
    fields = dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":\t" in line)
    return bool((int(fields["ShdPnd"], 16) | int(fields["SigPnd"], 16)) >> (sig - 1) & 1)


def _interrupt(cluster, job: str, out: Path, note: dict) -> None:
    """Send USR1 once the job has logged 2 steps; then cut Slurm's requeue hold (BeginTime, ~2 min, there to
    let the old allocation clean up: not what is tested here). The job's Python processes are stopped while
    Slurm delivers the signal, so that a fast machine cannot finish all steps before it lands (Slurm itself
    refuses to signal a suspended job); they resume once it is pending in every one of them."""
    import os
    import signal

    mf, end = out / "metrics.jsonl", time.monotonic() + 900
    try:
        while not (mf.exists() and len(mf.read_text().splitlines()) >= 2):
            if time.monotonic() > end or cluster.job_state(job)["JobState"] not in ("PENDING", "RUNNING"):
                note["error"] = "job ended before it could be signalled"
                return
            time.sleep(0.05)
        pids = _job_pythons(out)
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        try:
            at = len(mf.read_text().splitlines())
            # to the job's steps (each node's torchrun and its trainer), not the batch shell: as --signal=USR1@sec
            p = subprocess.run(["scancel", "--signal=USR1", job], capture_output=True, text=True)
            while p.returncode == 0 and not all(_pending(pid, signal.SIGUSR1) for pid in pids):
                if time.monotonic() > end:
                    break
                time.sleep(0.02)
        finally:
            for pid in pids:
                os.kill(pid, signal.SIGCONT)
        note.update(at_step=at, pids=len(pids), scancel=p.returncode, stderr=p.stderr)
        while (st := cluster.job_state(job))["Restarts"] == "0" or st["JobState"] != "PENDING":
            if time.monotonic() > end or st["JobState"] in ("COMPLETED", "FAILED", "CANCELLED"):
                note["error"] = f"not requeued: {st['JobState']} restarts {st['Restarts']}"
                return
            time.sleep(0.2)
        note["requeued"] = st["Reason"]
        cluster.run("scontrol", "update", f"jobid={job}", "begintime=now", check=False)
    except Exception as e:  # surfaced by the test
        note["error"] = repr(e)


def log_of(root: Path, name: str, job: str) -> str:
    return (root / "logs" / f"{name}-{job}.out").read_text()


@pytest.mark.slow  # multi-process / cluster run: the slow set (.ci/run runs it)
def test_cpt_over_two_nodes_with_torchrun_rendezvous(slurm_cluster, jobs):
    st = slurm_cluster.wait_job(jobs["two"], timeout=600)
    log = log_of(jobs["root"], "cpt-2nodes", jobs["two"])
    assert st["JobState"] == "COMPLETED", log[-3000:]
    assert st["NodeList"] == "node[1-2]" and st["NumNodes"] == "2"
    assert "master 127.0.0.1:" in log  # NodeAddr of node1: emulated names do not resolve
    assert "x DP 2;" in log  # 2 nodes x 1 worker joined one process group
    m = metrics(jobs["root"] / "two_nodes")
    assert [r["step"] for r in m] == list(range(1, 11))
    assert m[-1]["loss"] < m[0]["loss"]


@pytest.mark.slow  # multi-process / cluster run: the slow set (.ci/run runs it)
def test_three_stage_chain_runs_in_order(slurm_cluster, jobs):
    chain = jobs["chain"]
    assert [n for n, _ in chain] == ["chain-0-stable", "chain-1-boost", "chain-2-convert"]
    states = [slurm_cluster.wait_job(j, timeout=900) for _, j in chain]
    root = jobs["root"]
    for (name, j), st in zip(chain, states):
        assert st["JobState"] == "COMPLETED", log_of(root, name, j)[-3000:]
    for prev, nxt in zip(states, states[1:]):  # afterok: each starts only after the one before ended
        assert nxt["StartTime"] >= prev["EndTime"], (prev["EndTime"], nxt["StartTime"])
    script = (root / "logs" / "chain-1-boost.sbatch").read_text()
    assert f"checkpoint.init_from={root}/stable/checkpoints" in script  # wired to the stage before
    boost_log = log_of(root, *chain[1])
    assert f"initialised weights from {root}/stable/checkpoints/iter_{STEPS:07d}" in boost_log
    assert [r["step"] for r in metrics(root / "boost")] == [1, 2, 3]
    hf = json.loads((root / "boost" / "hf" / "config.json").read_text())
    assert hf["num_hidden_layers"] == 2 and hf["hidden_size"] == 64


@pytest.mark.slow  # multi-process / cluster run: the slow set (.ci/run runs it)
def test_usr1_checkpoints_requeues_and_resumes_exactly(slurm_cluster, jobs):
    root, job = jobs["root"], jobs["usr1"]
    jobs["watcher"].join(timeout=900)
    note = jobs["signalled"]
    assert "error" not in note and note.get("scancel") == 0 and note["pids"] >= 2, note  # torchrun + trainer
    st = slurm_cluster.wait_job(job, timeout=600)
    log = log_of(root, "cpt-usr1", job)
    assert st["JobState"] == "COMPLETED" and st["Restarts"] == "1", log[-3000:]
    stop = re.search(r"stopping at step (\d+) \(signal SIGUSR1\); checkpoint saved", log)
    assert stop and 2 <= int(stop.group(1)) < STEPS, log[-3000:]
    k = int(stop.group(1))
    assert f"requeueing job {job}" in log and f"at step {k} ({8 * k} samples consumed)" in log
    # the uninterrupted twin: the chain's stable stage (same config, 1 process)
    slurm_cluster.wait_job(jobs["chain"][0][1], timeout=900)
    resumed, straight = metrics(root / "usr1"), metrics(root / "stable")
    assert [r["step"] for r in resumed] == list(range(1, STEPS + 1))
    assert [r["loss"] for r in resumed] == [r["loss"] for r in straight]  # bitwise, final loss included


def test_data_tool_runs_as_job_array(slurm_cluster, jobs):
    root = jobs["root"]
    for task in (0, 1):
        st = slurm_cluster.wait_job(f"{jobs['array']}_{task}", timeout=900)
        assert st["JobState"] == "COMPLETED", st
    for i in (0, 1):
        summary = json.loads((root / "rules" / f"shard{i}" / "summary.json").read_text())
        assert summary["totals"]["docs"] == 40
    assert sorted(p.name for p in (root / "logs" / "data-rules.done").iterdir()) == ["0", "1"]
    # a resubmission has nothing left to do
    out = launch_cli("data", "rules", "--shards", *map(str, jobs["shards"]), "--workdir", str(REPO), "--log-dir",
                     str(root / "logs"), "--", "--input", "{shard}", "--out", f"{root}/rules/{{name}}")
    assert "all 2 shard(s) done" in out


@pytest.mark.parametrize("stage", ["stable", "boost", "sft", "dpo"])
def test_8b_scripts_pass_sbatch_test_only(slurm_cluster, tmp_path, stage):
    spec = pipeline.STAGES[stage]
    s = SlurmConfig(nodes=spec.nodes, gpus_per_node=spec.gpus_per_node, time=spec.time, workdir=str(REPO),
                    log_dir=str(tmp_path))
    r = render_train([spec.recipe], [], s)
    verdict = slurm.sbatch(slurm.write_script(r, s), test_only=True)
    assert re.search(r"to start at .* using \d+ processors on nodes node\[?[\d,-]+\]?", verdict), verdict
    assert f"#SBATCH --nodes={spec.nodes}" in r.script and "#SBATCH --gres=gpu:8" in r.script
    assert "--nproc-per-node 8" in r.script and "export CUDA_DEVICE_MAX_CONNECTIONS=1" in r.script  # TP 4


def test_pipeline_test_only_accepts_all_seven_scripts(slurm_cluster, tmp_path):
    out = launch_cli("pipeline", "--test-only", "--log-dir", str(tmp_path), "--workdir", str(REPO))
    lines = out.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == [f"carebot-{i}-{s}" for i, s in enumerate(pipeline.PIPELINE)]
    assert all("to start at" in line for line in lines), out
    assert "nodes node[1-3]" in lines[0]  # Stable CPT: 3 nodes x 8 GPUs


# ------------------------------------------------------------------------------- no cluster needed
def test_layout_errors_name_the_fix(tmp_path, launch_cpt_base):
    with pytest.raises(ConfigError, match="not a multiple of TP 4 x PP 2"):
        render_train(["stable_cpt.yaml"], [], SlurmConfig(nodes=1, gpus_per_node=4, log_dir=str(tmp_path)))
    with pytest.raises(ConfigError, match="global_batch_size 1008 is not divisible"):
        render_train(["stable_cpt.yaml"], [], SlurmConfig(nodes=5, gpus_per_node=8))  # DP 5
    with pytest.raises(ConfigError, match="below the time limit"):
        render_train(["tiny_stable_cpt.yaml"], launch_cpt_base, SlurmConfig(time="00:05:00", signal_seconds=600))
    r = render_train(["tiny_stable_cpt.yaml"], launch_cpt_base, SlurmConfig(time="01:00:00", signal_seconds=60))
    assert "CUDA_DEVICE_MAX_CONNECTIONS" not in r.script and "--gres" not in r.script  # TP 1, CPU


def test_after_run_decides_requeue(tmp_path, launch_cpt_base):
    from carebot.config import dump
    from carebot.run_config import load_config

    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    dump(load_config("tiny_stable_cpt.yaml", ["train.train_steps=30"]), out / "config.yaml")
    (out / "checkpoints" / "latest").write_text("iter_0000004")
    assert after_run(str(out), "none", 1, 0, 20) == 3  # signalled after saving progress: requeue
    assert after_run(str(out), "iter_0000004", 1, 1, 20) == 1  # crashed again without progress: fail
    assert after_run(str(out), "none", 1, 20, 20) == 1  # out of requeues
    (out / "checkpoints" / "latest").write_text("iter_0000030")
    assert after_run(str(out), "iter_0000004", 0, 1, 20) == 0  # finished


def test_array_script_quotes_shards_and_placeholders(tmp_path):
    s = SlurmConfig(log_dir=str(tmp_path))
    r = render_array("tokenize", ["a b.jsonl", "c.jsonl"], ["--input", "{shard}", "--output-prefix",
                                                            "out/{name}_{task}"], s, todo=[1], parallel=4)
    assert "#SBATCH --array=1%4" in r.script
    assert "SHARDS=('a b.jsonl' c.jsonl)" in r.script
    assert 'data tokenize --input "${SHARD}" --output-prefix out/"${NAME}"_"${TASK}"' in r.script


def test_plan_wires_each_stage_to_its_source():
    """The one stage graph: training stages chain, a convert exports the training stage before it, eval scores
    the convert before it; impossible chains are one clear error."""
    from carebot.errors import ConfigError

    steps = pipeline.plan(pipeline.PIPELINE)
    src = {s.index: (s.stage, pipeline.PIPELINE[s.source] if s.source is not None else None) for s in steps}
    assert src == {0: ("stable", None), 1: ("boost", "stable"), 2: ("convert", "boost"), 3: ("sft", "boost"),
                   4: ("dpo", "sft"), 5: ("convert", "dpo"), 6: ("eval", "convert")}
    assert steps[6].source == 5
    for bad, msg in ((["convert"], "needs a training stage"), (["eval"], "needs a converted model"),
                     (["stable", "bogus"], "unknown stage")):
        with pytest.raises(ConfigError, match=msg):
            pipeline.plan(bad)
