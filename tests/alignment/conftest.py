"""Alignment fixtures: real CMtMedQA dialogues, DPO pairs built from them, one shared TP=PP=1 init checkpoint."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CMTMEDQA = "dialogue/cmtmedqa_test.jsonl"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_stage(module: str, recipe: str, out: Path, overrides: list[str], nproc: int = 1, check: bool = True,
              timeout: int = 600) -> subprocess.CompletedProcess:
    """`python -m alignment.<module> --config recipe output_dir=out ...`, under torchrun when nproc > 1."""
    if nproc == 1:
        cmd = [sys.executable, "-m", module]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
               "--master-port", str(_port()), "-m", module]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    p = subprocess.run(cmd + ["--config", recipe, f"output_dir={out}", *overrides], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"run failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-5000:]}")
    return p


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="session")
def cmtmedqa(data_root) -> Path:
    return data_root / CMTMEDQA


@pytest.fixture(scope="session")
def dpo_pairs_file(tmp_path_factory, cmtmedqa) -> Path:
    """Pairs from real dialogues: prompt = the first patient turn, chosen = the doctor's reply to it,
    rejected = the doctor's first reply from the next dialogue (fluent, medical, but off-topic)."""
    from data_tools.formats import Pair, read_sft, write_pairs

    ds = [d for d in read_sft(cmtmedqa) if len(d.messages) >= 2 and d.messages[1]["role"] == "assistant"][:80]
    pairs = [Pair(prompt=[ds[i].messages[0]], chosen=ds[i].messages[1]["content"],
                  rejected=ds[(i + 1) % len(ds)].messages[1]["content"], id=ds[i].id) for i in range(len(ds))]
    out = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    write_pairs(out, pairs, fmt="trl")
    return out


@pytest.fixture(scope="session")
def tiny_base(small_tokenizer_dir) -> list[str]:
    """Overrides shared by every tiny alignment run: the 4k BPE, short windows, no dropout (layouts compare)."""
    return [f"data.tokenizer={small_tokenizer_dir}", "data.seq_length=128", "model.hidden_dropout=0.0",
            "model.attention_dropout=0.0", "train.tensorboard=false"]


@pytest.fixture(scope="session")
def init_ckpt(tmp_path_factory, tiny_base, cmtmedqa) -> Path:
    """One TP=PP=1 random-init checkpoint (iteration 0) that every SFT / DPO run starts from."""
    out = tmp_path_factory.mktemp("align-init")
    run_stage("alignment.sft", "tiny_sft.yaml", out, tiny_base + [
        f"data.data_path=[{cmtmedqa}]", "train.exit_after_steps=0", "checkpoint.init_from=null",
        "checkpoint.keep_best=false", "stage_args={max_dialogues: 40}"])
    assert (out / "checkpoints" / "latest").read_text() == "iter_0000000"
    return out / "checkpoints"
