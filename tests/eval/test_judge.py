"""the judge through the local OpenAI-protocol server: malformed replies are re-asked, then
counted as failures (never scored); a cached rerun makes zero requests; pairwise A/B with position swap."""
import json

import pytest

from tests.fixtures.fake_openai import FakeOpenAI
from carebot.llm import LLMConfig
from eval.engine import EngineConfig
from eval.judge import JudgeConfig, load_turns, run_consult, run_pairwise, validate_scores


def judge_answer(messages, body):
    """Stand-in judge: scores from the answer length; malformed for chosen turns. A dialogue whose id ends
    in 0 is always malformed (-> failure); turn 2 of every dialogue is malformed once (-> re-ask succeeds)."""
    user = next(m["content"] for m in messages if m["role"] == "user")
    reasked = len(messages) > 2
    if "【回答1】" in user:  # pairwise: prefer the longer answer; tie when equal
        a1 = user.split("【回答1】\n")[1].split("\n\n【回答2】")[0]
        a2 = user.split("【回答2】\n")[1].split("\n\n哪个")[0]
        return json.dumps({"winner": "1" if len(a1) > len(a2) else "2" if len(a2) > len(a1) else "tie"})
    if "ALWAYS_BAD" in user:
        return '{"fluency": 5, "relevance": "good"}'
    if "TURN2" in user and not reasked:
        return "评分：流畅性5分，相关性4分"
    return json.dumps({"fluency": 5, "relevance": 4, "completeness": 3, "proficiency": 4, "reason": "ok"})


def _marked_dialogues(tmp_path, data_root):
    """Real CMtMedQA dialogues, with markers that steer the stand-in judge."""
    rows = [json.loads(l) for l in open(data_root / "dialogue" / "cmtmedqa_test.jsonl", encoding="utf-8")][:6]
    for i, r in enumerate(rows):
        r["id"] = f"d{i}"
        ua = [m for m in r["messages"] if m["role"] == "user"]
        if i == 0:
            ua[0]["content"] += " ALWAYS_BAD"
        if len(ua) > 1:
            ua[1]["content"] += " TURN2"
    p = tmp_path / "cmt.jsonl"
    p.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return p


def test_strict_validator():
    assert validate_scores({"fluency": 5, "relevance": 1, "completeness": 3, "proficiency": 2}) == \
        {"fluency": 5, "relevance": 1, "completeness": 3, "proficiency": 2}
    for bad in [{"fluency": 5}, {"fluency": 6, "relevance": 1, "completeness": 3, "proficiency": 2},
                {"fluency": "5", "relevance": 1, "completeness": 3, "proficiency": 2},
                {"fluency": 4.5, "relevance": 1, "completeness": 3, "proficiency": 2},
                {"fluency": True, "relevance": 1, "completeness": 3, "proficiency": 2},
                {"fluency": 5, "relevance": 1, "completeness": 3, "proficiency": 2, "overall": 4}, [5, 4, 3, 2]]:
        with pytest.raises(ValueError):
            validate_scores(bad)


def test_consult_retries_failures_and_cache(tmp_path, data_root, tiny_llama3_lm_dir):
    path = _marked_dialogues(tmp_path, data_root)
    turns = load_turns("cmtmedqa", path)
    with FakeOpenAI(answer=judge_answer) as srv:
        llm = LLMConfig(base_url=srv.base_url, model="fake-judge", parse_retries=2, timeout_s=10,
                        cache_path=str(tmp_path / "run" / "judge_cache.sqlite"))
        cfg = JudgeConfig(out=str(tmp_path / "run"), llm=llm, name="tiny", benchmarks=("cmtmedqa",),
                          paths={"cmtmedqa": str(path)}, max_new_tokens=6, contamination="off",
                          engine=EngineConfig(model=str(tiny_llama3_lm_dir), batch_size=4))
        doc = run_consult(cfg)
        res = doc["consult"]["cmtmedqa"]
        n_bad = sum(t.dialogue == "d0" for t in turns)
        n_turn2 = sum(t.turn >= 2 for t in turns if t.dialogue != "d0")  # TURN2 stays in later histories
        assert res["n_turns"] == len(turns) and res["n_failed"] == n_bad and res["n_scored"] == len(turns) - n_bad
        # failures are not scored: every scored turn has the stand-in's exact scores
        assert res["dims"] == {"fluency": 5, "relevance": 4, "completeness": 3, "proficiency": 4} and res["avg"] == 4.0
        st = doc["llm_stats"]["cmtmedqa"]
        assert st["reasks"] == 3 * n_bad + n_turn2  # parse_retries=2 -> 3 tries per always-bad item
        # HTTP calls minus transport retries (a loaded CI box may drop a connection; those are retried, not re-asked)
        assert st["requests"] - st["transport_retries"] == 3 * n_bad + 2 * n_turn2 + (len(turns) - n_bad - n_turn2)
        assert srv.hits <= st["requests"]
        assert set(res["per_turn"]) == {str(t.turn) for t in turns if t.dialogue != "d0"}
        answers = (tmp_path / "run" / "consult" / "cmtmedqa" / "answers.jsonl").read_text().splitlines()
        assert len(answers) == len(turns)

        doc2 = run_consult(cfg)  # rerun: answers stored, validated judge replies cached
        st2 = doc2["llm_stats"]["cmtmedqa"]
        assert st2["cache_hits"] == len(turns) - n_bad
        # only the items that never validated are asked again (failures are never cached as scores)
        assert st2["requests"] - st2["transport_retries"] == 3 * n_bad
        assert doc2["consult"]["cmtmedqa"]["dims"] == res["dims"]


def test_consult_fully_cached_rerun_zero_requests(tmp_path, data_root, tiny_llama3_lm_dir):
    with FakeOpenAI(answer=judge_answer) as srv:
        llm = LLMConfig(base_url=srv.base_url, model="fake-judge", timeout_s=10, cache_path=str(tmp_path / "c.sqlite"))
        cfg = JudgeConfig(out=str(tmp_path / "run"), llm=llm, name="tiny", benchmarks=("cmb_clin",), limit=3,
                          max_new_tokens=6, contamination="off", engine=EngineConfig(model=str(tiny_llama3_lm_dir)))
        doc = run_consult(cfg)
        res = doc["consult"]["cmb_clin"]
        assert res["n_dialogues"] == 3 and res["n_failed"] == 0 and res["n_scored"] == res["n_turns"] >= 6
        st = doc["llm_stats"]["cmb_clin"]
        assert st["requests"] - st["transport_retries"] == res["n_turns"] and st["cache_hits"] == 0
        first = srv.hits
        doc2 = run_consult(cfg)
        assert srv.hits == first and doc2["llm_stats"]["cmb_clin"]["requests"] == 0  # zero requests on the cached rerun
        assert doc2["llm_stats"]["cmb_clin"]["cache_hits"] == res["n_turns"]


def test_pairwise_position_swap(tmp_path, data_root):
    rows = [json.loads(l) for l in open(data_root / "dialogue" / "huatuo26m_test_sample.jsonl", encoding="utf-8")][:8]
    p = tmp_path / "q.jsonl"
    p.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    # A: the reference answer itself for the first 4 (tie vs reference), a truncated one for the rest (loss)
    (tmp_path / "run" / "pairwise" / "huatuo26m").mkdir(parents=True)
    (tmp_path / "run" / "pairwise" / "huatuo26m" / "answers_a.jsonl").write_text("".join(
        json.dumps({"key": f"{r['id']}/1", "answer": r["answer"] if i < 4 else r["answer"][:5]}, ensure_ascii=False) + "\n"
        for i, r in enumerate(rows)), encoding="utf-8")
    with FakeOpenAI(answer=judge_answer) as srv:
        llm = LLMConfig(base_url=srv.base_url, model="fake-judge", timeout_s=10, cache_path=str(tmp_path / "c.sqlite"))
        cfg = JudgeConfig(out=str(tmp_path / "run"), llm=llm, name="A", benchmarks=("huatuo26m",),
                          paths={"huatuo26m": str(p)}, contamination="off")
        doc = run_pairwise(cfg, None, "reference", None)
        assert srv.hits >= 16 and sum(srv.answered_keys.values()) == 16  # both orders asked for every question
    pw = doc["pairwise"]
    assert (pw["win"], pw["tie"], pw["loss"], pw["failed"]) == (0, 4, 4, 0)


def test_judge_command_fails_when_most_turns_were_not_judged(tmp_path, data_root, tiny_llama3_lm_dir, capsys):
    """With SmolLM2 as judge, 3 of 5 replies failed and the command still exited 0 with "avg 4.0 over 2 turns".
    Now the line says how many of how many turns were judged, and below --min-judged (0.5) it is one error line,
    exit 2, no average."""
    from carebot import cli

    path = _marked_dialogues(tmp_path, data_root)
    rows = [json.loads(l) for l in path.read_text(encoding="utf-8").splitlines()]
    with FakeOpenAI(answer=judge_answer) as srv:
        argv = lambda out: ["eval", "judge", "consult", "--model", str(tiny_llama3_lm_dir), "--out", str(out),
                            "--benchmarks", "cmtmedqa", "--path", f"cmtmedqa={path}", "--judge-base-url", srv.base_url,
                            "--judge-model", "fake-judge", "--max-new-tokens", "4", "--contamination", "off"]
        assert cli.main(argv(tmp_path / "ok")) == 0  # d0 fails: most turns are still judged
        out = capsys.readouterr().out
        res = json.loads((tmp_path / "ok" / "judge_summary.json").read_text())["consult"]["cmtmedqa"]
        assert f"over {res['n_scored']} of {res['n_turns']} turns judged" in out and res["n_failed"] > 0
        for r in rows[:4]:  # now 4 of 6 dialogues always fail
            r["messages"][0]["content"] += " ALWAYS_BAD"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        rc = cli.main(argv(tmp_path / "bad"))
    cap = capsys.readouterr()
    errors = [l for l in cap.err.splitlines() if "error:" in l]
    res = json.loads((tmp_path / "bad" / "judge_summary.json").read_text())["consult"]["cmtmedqa"]
    assert rc == 2 and len(errors) == 1 and "avg" not in cap.out, cap.err[-2000:]
    assert f"{res['n_scored']} of {res['n_turns']} turns judged" in errors[0] and res["n_scored"] < res["n_turns"] / 2
