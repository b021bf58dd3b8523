"""DPO pairs: objective pairs from real MCQ items (never chosen == rejected, seeded);
subjective pairs through the local OpenAI-protocol server, both judge orders, ties dropped, cache hits on rerun."""
from __future__ import annotations

import json

from data_tools.sft import dpo_pairs as P
from launch.demo.responders import doctor_judge
from tests.fixtures.fake_openai import Faults, FakeOpenAI
from data_tools.sft.formats import Dialogue, read_pairs, write_sft
from tests.helpers import read_jsonl


def test_objective_pairs(data_root):
    items = read_jsonl(data_root / "benchmarks" / "medmcqa_dev.jsonl", 800) + read_jsonl(data_root / "benchmarks" / "medqa_usmle_4opt_test.jsonl", 200)
    pairs, skipped = P.objective_pairs(items, seed=1)
    assert len(pairs) + skipped == len(items) and len(pairs) > 0.9 * len(items)  # 1000 items (../shared/data), 400 (samples/)
    by_id = {str(it["id"]): it for it in items}
    for p in pairs:
        it = by_id[p.id.removeprefix("obj-")]
        assert p.chosen != p.rejected and p.chosen.split(". ", 1)[1].strip() != p.rejected.split(". ", 1)[1].strip()
        assert p.chosen == f"{it['answer']}. {it['options'][it['answer']]}" and p.meta["rejected_option"] != it["answer"]
    # reproducible with a seed, independent of file order; another seed draws other wrong options
    again, _ = P.objective_pairs(list(reversed(items)), seed=1)
    assert sorted((p.id, p.rejected) for p in again) == sorted((p.id, p.rejected) for p in pairs)
    other, _ = P.objective_pairs(items, seed=2)
    assert sum(a.rejected != b.rejected for a, b in zip(pairs, other)) > len(pairs) // 3
    # an item whose every wrong option repeats the gold text has no valid pair
    dup = {"id": "dup", "question": "q", "options": {"A": "x", "B": "x "}, "answer": "A"}
    assert P.objective_pairs([dup]) == ([], 1)


def test_subjective_pairs_via_server_with_cache(tmp_path, data_root):
    multi = [Dialogue(messages=r["messages"], id=r["id"]) for r in read_jsonl(data_root / "dialogue" / "cmtmedqa_test.jsonl", 40)]
    en = [Dialogue(messages=[{"role": "user", "content": r["question"]}, {"role": "assistant", "content": r["answer"]}], id=r["id"])
          for r in read_jsonl(data_root / "dialogue" / "medquad_en_sample.jsonl", 20)]
    sft = tmp_path / "sft.jsonl"
    write_sft(sft, multi + en)
    out = tmp_path / "dpo"
    with FakeOpenAI(answer=doctor_judge, faults=Faults(p429=0.1, p500=0.05, seed=2)) as srv:
        args = ["--sft", str(sft), "--n-subjective", "48", "--mcq", str(data_root / "benchmarks" / "medqa_usmle_4opt_test.jsonl"),
                "--base-url", srv.base_url, "--model", "fake", "--out", str(out), "--seed", "3", "--no-progress"]
        assert P.main(args) == 0
        s = json.loads((out / "summary.json").read_text())
        c = s["subjective"]
        assert c["prompts"] == 48 and s["llm"]["requests"] >= 48 * 3  # one generation + two judgements per prompt
        assert c["kept"] + c["tie"] + c["disagree"] + c["gen_failed"] + c["judge_failed"] == 48
        assert c["kept"] > 10 and c["tie"] + c["disagree"] > 0  # the fake judge's near-ties are dropped
        assert c["chosen_generated"] > 0 and c["chosen_original"] > 0
        pairs = read_pairs(out / "pairs.jsonl")
        subj = [p for p in pairs if p.meta["kind"] == "subjective"]
        assert len(subj) == c["kept"] and all(p.chosen != p.rejected and p.prompt[-1]["role"] == "user" for p in subj)
        for p in subj:  # both orders agree with the pair's direction
            v1, v2 = p.meta["verdicts"]
            assert {"original": "A", "generated": "B"}[p.meta["chosen_is"]] == v1["winner"]
            assert {"original": "B", "generated": "A"}[p.meta["chosen_is"]] == v2["winner"]
        mcq = read_jsonl(data_root / "benchmarks" / "medqa_usmle_4opt_test.jsonl")  # 1273 items (../shared/data), 200 (samples/)
        assert len(pairs) - len(subj) == len(mcq)
        hits = srv.hits
        first = (out / "pairs.jsonl").read_bytes()
        # rerun: every LLM answer comes from the cache, no request reaches the server, same pairs
        assert P.main(args) == 0
        s2 = json.loads((out / "summary.json").read_text())
        assert srv.hits == hits and s2["llm"]["cache_hits"] == s["llm"]["answers"] and s2["llm"]["requests"] == 0
        assert (out / "pairs.jsonl").read_bytes() == first


def test_prompts_follow_sft_distribution_seeded(data_root):
    ds = [Dialogue(messages=r["messages"], id=r["id"]) for r in read_jsonl(data_root / "dialogue" / "cmtmedqa_test.jsonl", 200)]
    a = P.sample_prompts(ds, 50, seed=0)
    assert [x[2] for x in a] == [x[2] for x in P.sample_prompts(ds, 50, seed=0)]
    assert len({x[2] for x in a}) == 50 and all(p[-1]["role"] == "user" for p, _, _ in a)
    multi_frac = sum(len(d.turns()) > 1 for d in ds) / len(ds)
    assert abs(sum(len(p) > 1 for p, _, _ in a) / 50 - multi_frac) < 0.2  # multi-turn prompts keep their history


def test_bad_input_files_are_one_line_errors(tmp_path, data_root):
    """A missing --mcq file and a line of bad UTF-8 (after a real item): one line naming file[:line], no traceback."""
    import subprocess

    bad = tmp_path / "bad.jsonl"
    real = (data_root / "benchmarks" / "medmcqa_dev.jsonl").read_bytes().splitlines(True)[0]
    bad.write_bytes(real + b'{"question": "\xff\xfe", "options": {}, "answer": "A"}\n')
    for mcq, needle in (("/nonexistent.jsonl", "/nonexistent.jsonl: no such input file"),
                        (str(bad), f"{bad}:2: not valid UTF-8")):
        p = subprocess.run(["carebot", "data", "dpo-pairs", "--mcq", mcq, "--out", str(tmp_path / "out")],
                           capture_output=True, text=True, timeout=120)
        assert p.returncode != 0 and needle in p.stderr and "Traceback" not in p.stderr, p.stderr[-2000:]
