"""A kill -9 of a command takes its helper processes with it: none is left running under PID 1 (tokenize's
tokenizer-check worker and its resource tracker; the trainer's checkpoint-writer Manager)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import REPO


def _children(pid: int) -> set[int]:
    out = set()
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                if int(Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.add(int(p))
            except (OSError, IndexError, ValueError):
                pass
    return out


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def _kill_when(cmd: list[str], ready, timeout: float = 240, wait: float = 3) -> list[int]:
    """Run `cmd`, kill -9 it once `ready(children)` holds, return its descendants still running `wait` s later."""
    p = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seen: set[int] = set()
    end = time.time() + timeout
    try:
        while time.time() < end and p.poll() is None:
            kids = _children(p.pid)
            seen |= kids | {g for k in kids for g in _children(k)}
            if ready(seen):
                break
            time.sleep(0.02)
        assert p.poll() is None, "the command ended before the kill point"
        assert ready(seen), "the kill point never came"
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    time.sleep(wait)
    left = [c for c in seen if _running(c)]
    for c in left:
        os.kill(c, signal.SIGKILL)
    return left


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux")
def test_tokenize_helpers_die_with_it(tmp_path, data_root, llama3_tokenizer_dir):
    src = tmp_path / "in.jsonl"
    src.write_bytes((data_root / "general" / "wikitext2_paragraphs_en.jsonl").read_bytes() * 10)
    cmd = [sys.executable, "-m", "carebot.cli", "data", "tokenize", "--input", str(src), "--output-prefix",
           str(tmp_path / "o"), "--tokenizer", str(llama3_tokenizer_dir)]
    assert _kill_when(cmd, lambda seen: len([c for c in seen if _running(c)]) >= 2) == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux")
def test_trainer_checkpoint_writer_dies_with_it(tmp_path, cpt_prefixes, small_tokenizer_dir):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "carebot.cli", "pretrain", "--config", "tiny_stable_cpt.yaml", f"output_dir={out}",
           f"data.tokenizer={small_tokenizer_dir}", f"data.data_path=[{cpt_prefixes['medical_en']}]",
           "data.seq_length=32", "train.micro_batch_size=2", "train.global_batch_size=2", "train.train_steps=100000",
           "checkpoint.save_interval=2", "train.eval_interval=0", "train.tensorboard=false"]
    assert _kill_when(cmd, lambda seen: (out / "checkpoints" / "latest").exists()) == []


@pytest.mark.slow  # multi-process / cluster run: the slow set (.ci/run runs it)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux")
def test_ranks_die_with_torchrun(tmp_path, cpt_prefixes, small_tokenizer_dir):
    """kill -9 of torchrun (2 ranks, TP2) used to leave every rank training under PID 1, writing checkpoints:
    now each rank has the kernel signal it when its launcher dies. No rank (nor any helper of one) is alive 5 s
    after the kill."""
    from tests.helpers import free_port

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port()),
           "-m", "pretrain.train", "--config", "tiny_stable_cpt.yaml", f"output_dir={out}",
           f"data.tokenizer={small_tokenizer_dir}", f"data.data_path=[{cpt_prefixes['medical_en']}]",
           "data.seq_length=32", "train.micro_batch_size=2", "train.global_batch_size=2", "train.train_steps=100000",
           "parallel.tensor=2", "checkpoint.save_interval=2", "train.eval_interval=0", "train.tensorboard=false"]
    left = _kill_when(cmd, lambda seen: (out / "checkpoints" / "latest").exists(), wait=5)
    assert left == [], f"{len(left)} processes of the run alive 5 s after torchrun was killed"
