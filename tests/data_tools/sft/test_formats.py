"""SFT / DPO formats: lossless read -> write -> read in every dialect, on real dialogues."""
from __future__ import annotations

import json

import pytest

from carebot.errors import InputError
from data_tools.sft.formats import (PAIR_FORMATS, SFT_FORMATS, Dialogue, Pair, parse_chat, read_pairs, read_sft,
                                render_chat, write_pairs, write_sft)
from tests.helpers import read_jsonl


@pytest.fixture(scope="module")
def dialogues(data_root) -> list[Dialogue]:
    recs = read_jsonl(data_root / "dialogue" / "cmtmedqa_test.jsonl", 200)
    out = []
    for i, r in enumerate(recs):
        d = Dialogue(messages=r["messages"], id=r["id"], meta={"dept1": r.get("dept1"), "source": r["source"]})
        if i % 3 == 0:
            d.system = "你是一名专业、耐心的医生。"
        out.append(d)
    en = read_jsonl(data_root / "dialogue" / "medquad_en_sample.jsonl", 50)  # multi-line English answers
    out += [Dialogue(messages=[{"role": "user", "content": r["question"]}, {"role": "assistant", "content": r["answer"]}],
                     id=r["id"]) for r in en]
    return out


@pytest.fixture(scope="module")
def pairs(dialogues) -> list[Pair]:
    out = []
    for i, d in enumerate(dialogues):
        msgs = d.chat_messages()
        k = max(j for j, m in enumerate(msgs) if m["role"] == "assistant")
        other = dialogues[(i + 7) % len(dialogues)].messages[-1]["content"]
        meta = {"kind": "subjective", "chosen_reward": 8.0, "rejected_reward": 3.5} if i % 2 else {}
        out.append(Pair(prompt=msgs[:k], chosen=msgs[k]["content"], rejected=other, id=d.id, meta=meta))
    return out


@pytest.mark.parametrize("fmt", SFT_FORMATS)
def test_sft_round_trip(tmp_path, dialogues, fmt):
    p = tmp_path / f"sft_{fmt}.jsonl"
    write_sft(p, dialogues, fmt)
    back = read_sft(p)  # auto-detected
    assert back == dialogues
    write_sft(tmp_path / "again.jsonl", back, fmt)  # and the bytes are stable
    assert (tmp_path / "again.jsonl").read_bytes() == p.read_bytes()


def test_sft_cross_format_and_nemo_shape(tmp_path, dialogues):
    write_sft(tmp_path / "n.jsonl", dialogues, "nemo")
    rec = json.loads((tmp_path / "n.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert rec["mask"] == "User" and rec["system"] == dialogues[0].system
    assert [c["from"] for c in rec["conversations"][:2]] == ["User", "Assistant"]
    write_sft(tmp_path / "o.jsonl", read_sft(tmp_path / "n.jsonl"), "openai")
    assert read_sft(tmp_path / "o.jsonl") == dialogues


@pytest.mark.parametrize("fmt", PAIR_FORMATS)
def test_pairs_round_trip(tmp_path, pairs, fmt):
    p = tmp_path / f"dpo_{fmt}.jsonl"
    write_pairs(p, pairs, fmt)
    back = read_pairs(p)
    assert back == pairs
    write_pairs(tmp_path / "again.jsonl", back, fmt)
    assert (tmp_path / "again.jsonl").read_bytes() == p.read_bytes()


def test_template_matches_tokenizer(small_tokenizer_dir, pairs):
    """The built-in renderer is the tokenizer's chat template; parse_chat inverts it."""
    from carebot.tokenizer import load_tokenizer

    tok = load_tokenizer(small_tokenizer_dir)
    for p in pairs[:4]:
        s = render_chat(p.prompt, add_generation_prompt=True)
        assert s == render_chat(p.prompt, tok, add_generation_prompt=True)
        assert parse_chat(s) == (p.prompt, True)


def test_bad_input_names_file_and_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n{"messages": [{"role": "doctor", "content": "x"}]}\n')
    with pytest.raises(InputError, match=r"bad\.jsonl:2"):
        read_sft(p)
    p.write_text('{"prompt": "q", "chosen": "a", "rejected": "b"}\n{"oops": 1}\n')
    with pytest.raises(InputError, match=r"bad\.jsonl:2"):
        read_pairs(p)
