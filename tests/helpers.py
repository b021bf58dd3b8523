"""Helpers the tests import: run a stage as its users do (subprocess, torchrun), read its metrics, real text."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from carebot import io

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_stage(module: str, recipe: str, out: Path, overrides: list[str], nproc: int = 1, check: bool = True,
              timeout: int = 600) -> subprocess.CompletedProcess:
    """`python -m <module> --config recipe output_dir=out ...` (pretrain.train, alignment.sft, ...), under
    torchrun when nproc > 1."""
    if nproc == 1:
        cmd = [sys.executable, "-m", module]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
               "--master-port", str(free_port()), "-m", module]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    p = subprocess.run(cmd + ["--config", recipe, f"output_dir={out}", *overrides], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"run failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-5000:]}")
    return p


def refused_in_process(capsys, command: str, recipe: str, out: Path, overrides: list[str]) -> tuple[int, str]:
    """`carebot <command> --config recipe ...` in this process, as the console script runs it, for a config the
    stage must refuse: (exit status, stderr). Seconds faster than `run_stage`, which pays megatron's import."""
    from carebot import cli

    rc = cli.main([command, "--config", recipe, f"output_dir={out}", *overrides])
    return rc, capsys.readouterr().err


def metrics(out: Path) -> list[dict]:
    """The trainer's metrics.jsonl rows."""
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def read_jsonl(path: Path, limit: int | None = None) -> list[dict]:
    """The records of a JSONL file as a list (through the product's one reader)."""
    return list(io.read_jsonl(path, limit))


def corpus_texts(root: Path, per_file: int = 1500) -> list[str]:
    """Real bilingual text (medical + general, zh + en) from data_dir() (`root`): the first `per_file` records of
    each file, or all of a smaller one (samples/ carries 300 each)."""
    files = {"dialogue/medquad_en_sample.jsonl": ("question", "answer"),
             "dialogue/huatuo26m_test_sample.jsonl": ("question", "answer"),
             "general/wikitext2_paragraphs_en.jsonl": ("text",),
             "general/cmrc2018_wiki_paragraphs_zh.jsonl": ("text",)}
    texts = []
    for rel, keys in files.items():
        for d in read_jsonl(root / rel, per_file):
            texts.append("\n".join(str(d[k]) for k in keys if d.get(k)))
    return texts


def tiny_cpt_overrides(prefixes: dict, tokenizer_dir: Path, global_batch: int, steps: int) -> list[str]:
    """A short tiny_stable_cpt run on two real buckets (60% medical_en, 40% medical_zh), a loss per step."""
    return [f"data.tokenizer={tokenizer_dir}", f"data.data_path=[0.6, {prefixes['medical_en']}, 0.4, {prefixes['medical_zh']}]",
            "data.seq_length=64", "train.micro_batch_size=2", f"train.global_batch_size={global_batch}",
            f"train.train_steps={steps}", "train.eval_interval=0", "train.log_interval=1", "train.tensorboard=false",
            "checkpoint.save_interval=1000"]
