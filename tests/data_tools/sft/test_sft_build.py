"""sft-build on real sources: merge (dialogue, QA, MCQ), duplicates, unsafe content, eval overlap, LLM rewrite."""
from __future__ import annotations

import json

from data_tools.sft import sft_build
from launch.demo.responders import doctor_judge
from tests.fixtures.fake_openai import FakeOpenAI
from data_tools.sft.formats import read_sft
from tests.helpers import read_jsonl


def _write(path, recs):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), encoding="utf-8")
    return str(path)


def test_build_merge_clean_decontam(tmp_path, data_root):
    dlg = read_jsonl(data_root / "dialogue" / "cmtmedqa_test.jsonl", 30)
    qa = read_jsonl(data_root / "dialogue" / "toyhom_internal_medicine_qa.jsonl", 40)
    mcq = read_jsonl(data_root / "benchmarks" / "medmcqa_dev.jsonl", 10)  # an eval set: all 10 must go
    unsafe = dict(qa[0], id="unsafe-1", answer=qa[0]["answer"] + " 可以去网上赌场试试手气。")
    srcs = [_write(tmp_path / "dialogue.jsonl", dlg + dlg[:3]),  # 3 exact duplicates
            _write(tmp_path / "qa.jsonl", qa + [unsafe, dict(qa[1], id="dup-ws", answer=" " + qa[1]["answer"] + "\n")]),
            _write(tmp_path / "mcq.jsonl", mcq)]
    out = tmp_path / "out"
    bench = f"medmcqa={data_root / 'benchmarks' / 'medmcqa_dev.jsonl'}"
    assert sft_build.main(["--input", *srcs, "--out", str(out), "--bench", bench, "--format", "nemo", "--no-progress"]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["read"] == 33 + 42 + 10 and s["kinds"] == {"dialogue": 33, "qa": 42, "mcq": 10}
    # unsafe: the injected gambling line, and a real toyhom question that mentions 色情 (one hit drops; see docs)
    assert s["dropped"] == {"duplicate": 4, "unsafe": 2, "eval_overlap": 10}
    got = read_sft(out / "sft.jsonl")
    assert len(got) == s["written"] == 30 + 39 and s["multi_turn"] == sum(len(r["messages"]) > 2 for r in dlg)
    assert got[0].messages == dlg[0]["messages"]  # authentic dialogues kept as they are
    man = json.loads((out / "decontam" / "manifest.json").read_text())
    assert man["benchmarks"]["medmcqa"]["n"] == 10
    ex = [json.loads(l) for l in (out / "excluded.jsonl").read_text().splitlines()]
    assert {e["drop_reason"] for e in ex} == {"duplicate", "unsafe", "eval_overlap"}


def test_mcq_to_dialogue(data_root):
    it = read_jsonl(data_root / "benchmarks" / "medqa_usmle_4opt_test.jsonl", 1)[0]
    d, kind = sft_build.to_dialogue(it, "x:1")
    assert kind == "mcq" and d.messages[0]["content"].startswith(it["question"])
    assert d.messages[1]["content"].startswith(f"Answer: {it['answer']}. {it['options'][it['answer']]}")


def test_rewrite_through_llm_client(tmp_path, data_root):
    qa = read_jsonl(data_root / "dialogue" / "huatuo26m_test_sample.jsonl", 12)
    dlg = read_jsonl(data_root / "dialogue" / "cmtmedqa_test.jsonl", 3)
    src = _write(tmp_path / "rw.jsonl", qa + dlg)
    out = tmp_path / "out"
    with FakeOpenAI(answer=doctor_judge) as srv:
        args = ["--rewrite", src, "--out", str(out), "--no-decontam", "--base-url", srv.base_url, "--model", "fake", "--no-progress"]
        assert sft_build.main(args) == 0
        n_turns = len(qa) + sum(len(r["messages"]) // 2 for r in dlg)
        assert srv.hits == n_turns
        got = read_sft(out / "sft.jsonl")
        assert len(got) == 15 and all(d.meta.get("rewritten") for d in got)
        assert all(m["content"].startswith("您好") for d in got for m in d.messages if m["role"] == "assistant")
        assert [m["content"] for m in got[0].messages if m["role"] == "user"] == [qa[0]["question"]]
        assert sft_build.main(args) == 0 and srv.hits == n_turns  # cached
