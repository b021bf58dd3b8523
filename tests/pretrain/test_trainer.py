"""The one trainer, for real: megatron-core on gloo, real text, tiny LLaMA-3-shaped model."""
from __future__ import annotations

import json
import math
import re
import subprocess
from pathlib import Path

import pytest
import torch

from tests.helpers import metrics, run_stage


def run_pretrain(out: Path, overrides: list[str], nproc: int = 1, recipe: str = "tiny_stable_cpt.yaml",
                 check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    return run_stage("pretrain.train", recipe, out, overrides, nproc, check, timeout)


@pytest.fixture(scope="module")
def base(cpt_prefixes, small_tokenizer_dir) -> list[str]:
    p = cpt_prefixes
    return [f"data.tokenizer={small_tokenizer_dir}",
            f"data.data_path=[0.5, {p['medical_en']}, 0.3, {p['medical_zh']}, 0.2, {p['general_en']}]",
            "data.seq_length=64", "train.micro_batch_size=2", "train.global_batch_size=8",
            "train.eval_interval=0", "train.log_interval=5", "train.tensorboard=false"]


def test_loss_decreases_on_real_text(tmp_path, base):
    run_pretrain(tmp_path, base + ["train.train_steps=50", "optim.lr=3e-3", "checkpoint.save_interval=1000"])
    m = metrics(tmp_path)
    assert [r["step"] for r in m] == list(range(1, 51))
    first, last = m[0]["loss"], sum(r["loss"] for r in m[-5:]) / 5
    assert first > 7.5  # ~ln(4096) at init
    assert last < first - 1.0, (first, last)
    assert all(r["tokens_per_s"] > 0 and r["tflops_per_device"] > 0 for r in m)


@pytest.fixture(scope="module")
def init_ckpt(tmp_path_factory, base) -> Path:
    """One TP=PP=1 initial checkpoint that every layout starts from."""
    out = tmp_path_factory.mktemp("init")
    run_pretrain(out, base + ["train.train_steps=5", "train.exit_after_steps=0"])
    assert (out / "checkpoints" / "latest").read_text() == "iter_0000000"
    return out / "checkpoints"


@pytest.fixture(scope="module")
def reference_losses(tmp_path_factory, base, init_ckpt) -> list[float]:
    out = tmp_path_factory.mktemp("ref")
    run_pretrain(out, base + ["train.train_steps=5", f"checkpoint.init_from={init_ckpt}"])
    return [r["loss"] for r in metrics(out)]


@pytest.mark.parametrize("layout", [pytest.param(["parallel.tensor=2"], id="tp2", marks=pytest.mark.slow),
                                    pytest.param(["parallel.pipeline=2"], id="pp2", marks=pytest.mark.slow),
                                    pytest.param([], id="dp2", marks=pytest.mark.slow)])  # the slow set (.ci/run runs it)
def test_parallel_layouts_match_single_process(tmp_path, base, init_ckpt, reference_losses, layout):
    """Loaded resharded from the TP=PP=1 checkpoint, 2-process runs reproduce the single-process curve."""
    run_pretrain(tmp_path, base + layout + ["train.train_steps=5", f"checkpoint.init_from={init_ckpt}"], nproc=2)
    losses = [r["loss"] for r in metrics(tmp_path)]
    assert len(losses) == 5
    for a, b in zip(losses, reference_losses):
        assert abs(a - b) / abs(b) < 1e-4, (losses, reference_losses)
    assert losses[-1] < losses[0]  # it trained


@pytest.mark.slow  # multi-process / cluster run: the slow set (.ci/run runs it)
def test_tied_embeddings_checksum_and_loss_at_pp2(tmp_path, base):
    """With tied embeddings the last pipeline stage holds a copy of the embedding: the init checksum counts it
    once (before: twice, so a PP2 run's checksum never matched its own checkpoint's) and step 1 matches PP1."""
    tied = base + ["model.untie_embeddings=false", "train.train_steps=1"]
    run_pretrain(tmp_path / "init", tied + ["train.exit_after_steps=0"])
    it = tmp_path / "init" / "checkpoints" / "iter_0000000"
    saved = torch.load(it / "common.pt", weights_only=True)["carebot"]["param_checksum"]
    run_pretrain(tmp_path / "pp1", tied + [f"checkpoint.init_from={it.parent}"])
    run_pretrain(tmp_path / "pp2", tied + [f"checkpoint.init_from={it.parent}", "parallel.pipeline=2"], nproc=2)
    (pp1,), (pp2,) = metrics(tmp_path / "pp1"), metrics(tmp_path / "pp2")
    assert pp1["init_param_checksum"] == saved
    assert abs(pp2["init_param_checksum"] - saved) <= 1e-9 * abs(saved), (pp2["init_param_checksum"], saved)
    assert abs(pp2["loss"] - pp1["loss"]) < 1e-5 * pp1["loss"]


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, base) -> Path:
    out = tmp_path_factory.mktemp("straight")
    run_pretrain(out, base + ["train.train_steps=20", "checkpoint.save_interval=100"])
    return out


def test_exact_resume_is_bitwise(tmp_path, base, straight_run):
    over = base + ["train.train_steps=20", "checkpoint.save_interval=100"]
    run_pretrain(tmp_path, over + ["train.exit_after_steps=10"])  # the process exits after step 10
    assert (tmp_path / "checkpoints" / "latest").read_text() == "iter_0000010"
    # a save interrupted mid-way (no metadata, never published) must be ignored
    torn = tmp_path / "checkpoints" / "iter_0000015.tmp"
    torn.mkdir()
    (torn / "common.pt").write_bytes(b"\0" * 100)
    # ... after steps 11-15 were logged: what a kill -9 during that save leaves; those steps run again
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.writelines(json.dumps(r) + "\n" for r in metrics(straight_run)[10:15])
        f.write(json.dumps(metrics(straight_run)[15])[:30])  # and the row being written when the kill came
    p = run_pretrain(tmp_path, over)
    assert "metrics.jsonl: dropped 6 row(s) past step 10" in p.stdout
    straight, resumed = metrics(straight_run), metrics(tmp_path)
    assert [r["step"] for r in resumed] == list(range(1, 21))
    assert [r["loss"] for r in resumed] == [r["loss"] for r in straight]  # bitwise (floats compared exactly)
    assert [r["grad_norm"] for r in resumed[10:]] == [r["grad_norm"] for r in straight[10:]]


@pytest.mark.slow  # multi-process / cluster run: the slow set (.ci/run runs it)
def test_signal_to_the_whole_process_group_after_a_save(tmp_path, base):
    """SLURM's `--signal=USR1@T` / `scancel --signal` / preemption's SIGTERM reach every process of the job step,
    helpers too: megatron's checkpoint writer keeps a multiprocessing Manager alive after the first save, and a
    signal that killed it made the emergency save fail. The run must checkpoint at the step and exit 0."""
    import os
    import signal
    import sys
    import time

    from tests.helpers import REPO

    cmd = [sys.executable, "-m", "pretrain.train", "--config", "tiny_stable_cpt.yaml", f"output_dir={tmp_path}",
           *base, "train.train_steps=100000", "checkpoint.save_interval=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    p = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True)
    try:
        mf, end = tmp_path / "metrics.jsonl", time.monotonic() + 300
        while not (mf.exists() and len(mf.read_text().splitlines()) >= 3):  # the step-2 save is done
            assert p.poll() is None and time.monotonic() < end, p.stdout.read()[-3000:]
            time.sleep(0.05)
        os.killpg(p.pid, signal.SIGUSR1)  # every process of the group, as slurmd signals a step
        out, _ = p.communicate(timeout=300)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode == 0, out[-3000:]
    stop = re.search(r"stopping at step (\d+) \(signal SIGUSR1\); checkpoint saved", out)
    assert stop, out[-3000:]
    k = int(stop.group(1))
    assert (tmp_path / "checkpoints" / "latest").read_text() == f"iter_{k:07d}"
    assert [r["step"] for r in metrics(tmp_path)] == list(range(1, k + 1))
    run_pretrain(tmp_path, base + [f"train.train_steps={k + 2}", "checkpoint.save_interval=2",  # resumes at k
                                   "checkpoint.override_resume=[train.train_steps]"])
    assert [r["step"] for r in metrics(tmp_path)] == list(range(1, k + 3))


def test_stable_to_boost_weights_and_schedule(tmp_path, base, straight_run):
    stable = straight_run / "checkpoints"
    run_pretrain(tmp_path, base + ["train.train_steps=10", "optim.lr=1e-3", "optim.min_lr=1e-4",
                                   f"checkpoint.init_from={stable}"], recipe="tiny_boost_cpt.yaml")
    import torch

    common = torch.load(stable / "iter_0000020" / "common.pt", weights_only=True)
    boost = metrics(tmp_path)
    assert boost[0]["init_param_checksum"] == common["carebot"]["param_checksum"]
    # new schedule: 10% warmup (1 step) then cosine from 1e-3 toward 1e-4, reached one step past the last
    expect = [1e-3 * min(1.0, k / 1) if k <= 1 else
              1e-4 + 0.5 * (1e-3 - 1e-4) * (1 + math.cos(math.pi * (k - 1) / 10)) for k in range(1, 11)]
    assert [r["lr"] for r in boost] == pytest.approx(expect, rel=1e-9)
    # starting from the stable weights, not from scratch: the first boost loss is far below stable's first
    assert boost[0]["loss"] < metrics(straight_run)[0]["loss"] - 0.5


@pytest.mark.slow  # multi-process / cluster run: the slow set (.ci/run runs it)
def test_min_lr_zero_still_trains_the_last_step(tmp_path, base):
    """min_lr 0: no step trains at lr 0 (before: the last step did, so a 1-step run changed no weight)."""
    run_pretrain(tmp_path, base + ["train.train_steps=1", "optim.min_lr=0", "optim.lr=1e-3"])
    (row,) = metrics(tmp_path)
    saved = torch.load(tmp_path / "checkpoints" / "iter_0000001" / "common.pt", weights_only=True)["carebot"]
    assert row["lr"] > 0 and saved["param_checksum"] != row["init_param_checksum"]


@pytest.mark.parametrize("override,needle", [
    (["data.data_path=[1.0, /nonexistent/prefix]"], "data prefix not found: /nonexistent/prefix"),
    (["model.vocab_size=128256"], "vocab size mismatch"),
    (["parallel.tensor=2", "model.num_attention_heads=5", "model.num_query_groups=5", "model.hidden_size=80"],
     "tensor parallel size 2 does not divide num_attention_heads 5"),
    (["train.bogus_key=1"], "unknown config key(s): train.bogus_key"),
], ids=["missing-prefix", "vocab", "tp-heads", "unknown-key"])
def test_bad_input_is_one_clear_line(tmp_path, base, override, needle, capsys):
    """Checked before any process group starts: in-process, exit code 2, one line, no traceback."""
    from pretrain.train import main

    assert main(["--config", "tiny_stable_cpt.yaml", f"output_dir={tmp_path}", *base, *override]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.slow  # multi-process / cluster run: the slow set (.ci/run runs it)
def test_empty_split_is_a_clear_error_not_a_hang(tmp_path, base, cpt_prefixes, small_tokenizer_dir, data_root):
    """A 20-document bucket at split 99,1,0 has an empty valid split, on which megatron's GPTDataset loops
    forever; we stop first with one line (exit 2), and the suggested split trains."""
    from carebot.tokenizer import load_tokenizer
    from tests.helpers import read_jsonl
    from tests.pretrain.conftest import write_prefix

    texts = [r["text"] for r in read_jsonl(data_root / "general/cmrc2018_wiki_paragraphs_zh.jsonl", 20)]
    small = write_prefix(load_tokenizer(small_tokenizer_dir), texts, tmp_path / "general_zh")
    data = f"data.data_path=[0.9, {cpt_prefixes['medical_en']}, 0.1, {small}]"
    p = run_pretrain(tmp_path / "a", base + [data, "train.train_steps=2"], check=False, timeout=300)
    assert p.returncode == 2, p.stderr[-3000:]
    assert f"data prefix {small} has 20 document(s): data.split=99,1,0 leaves its valid split 0 document(s)" in p.stderr
    run_pretrain(tmp_path / "b", base + [data, "train.train_steps=2", "data.split=100,0,0"], timeout=300)
    assert [r["step"] for r in metrics(tmp_path / "b")] == [1, 2]


def test_bad_global_batch_is_one_clear_line(tmp_path, base, capsys):
    from tests.helpers import refused_in_process

    rc, err = refused_in_process(capsys, "pretrain", "tiny_stable_cpt.yaml", tmp_path,
                                 base + ["train.global_batch_size=6", "train.micro_batch_size=4"])
    assert rc == 2, err[-2000:]
    assert "global_batch_size 6 is not divisible by micro_batch_size 4 x data-parallel size 1" in err
    assert "Traceback" not in err
