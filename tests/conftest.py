"""Shared fixtures: real data, the real LLaMA-3 tokenizer (built offline), a scratch dir."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_tools.paths import cache_dir, data_dir


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
