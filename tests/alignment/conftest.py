"""Alignment fixtures: real CMtMedQA dialogues, DPO pairs built from them, one shared TP=PP=1 init checkpoint."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import run_stage

REPO = Path(__file__).resolve().parents[2]
CMTMEDQA = "dialogue/cmtmedqa_test.jsonl"


@pytest.fixture(scope="session")
def cmtmedqa(data_root) -> Path:
    return data_root / CMTMEDQA


@pytest.fixture(scope="session")
def dpo_pairs_file(tmp_path_factory, cmtmedqa) -> Path:
    """Pairs from real dialogues: prompt = the first patient turn, chosen = the doctor's reply to it,
    rejected = the doctor's first reply from the next dialogue (fluent, medical, but off-topic)."""
    from data_tools.sft.formats import Pair, read_sft, write_pairs

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
