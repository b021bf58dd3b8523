"""Shared fixtures: real data, the real LLaMA-3 tokenizer (built offline), a scratch dir."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from data_tools.paths import cache_dir, data_dir

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


def metrics(out: Path) -> list[dict]:
    """The trainer's metrics.jsonl rows."""
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="session")
def data_root() -> Path:
    return data_dir()


@pytest.fixture(scope="session")
def llama3_tokenizer_dir() -> Path:
    from pretrain.tokenizer import build_llama3_tokenizer

    return build_llama3_tokenizer(cache_dir() / "llama3-tokenizer")


@pytest.fixture(scope="session")
def llama3_tokenizer(llama3_tokenizer_dir):
    from pretrain.tokenizer import load_tokenizer

    return load_tokenizer(llama3_tokenizer_dir)


def read_jsonl(path: Path, limit: int | None = None) -> list[dict]:
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if limit is not None and len(out) >= limit:
                break
            out.append(json.loads(line))
    return out


@pytest.fixture(scope="session")
def tiny_llama3_lm_dir(tmp_path_factory, llama3_tokenizer_dir) -> Path:
    """A tiny random LlamaForCausalLM on the real LLaMA-3 vocab (~8.3M params), saved with its tokenizer as an
    HF model directory (what `pretrain.convert` exports). Seeded: same weights every session."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from pretrain.tokenizer import load_tokenizer

    out = tmp_path_factory.mktemp("tiny-llama3-lm")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                      tie_word_embeddings=True, initializer_range=0.2, bos_token_id=128000, eos_token_id=128009)
    LlamaForCausalLM(cfg).save_pretrained(out)
    load_tokenizer(llama3_tokenizer_dir).save_pretrained(out)
    return out


def corpus_texts(root: Path, per_file: int = 1500) -> list[str]:
    """Real bilingual text (medical + general, zh + en) from shared/data."""
    files = {"dialogue/medquad_en_sample.jsonl": ("question", "answer"),
             "dialogue/huatuo26m_test_sample.jsonl": ("question", "answer"),
             "general/wikitext2_paragraphs_en.jsonl": ("text",),
             "general/cmrc2018_wiki_paragraphs_zh.jsonl": ("text",)}
    texts = []
    for rel, keys in files.items():
        for d in read_jsonl(root / rel, per_file):
            texts.append("\n".join(str(d[k]) for k in keys if d.get(k)))
    return texts


@pytest.fixture(scope="session")
def small_tokenizer_dir(data_root) -> Path:
    """A 4k byte-level BPE trained on real zh+en text, with LLaMA-3's specials and chat template."""
    from pretrain.tokenizer import train_small_bpe

    return train_small_bpe(corpus_texts(data_root), cache_dir() / "bpe4k-v1", vocab_size=4096)
