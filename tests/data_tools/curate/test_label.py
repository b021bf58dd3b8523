"""`carebot data label` against the fault-injecting fake server: 1,000 real items (600 from samples/), no loss, no duplicates,
kill -9 mid-run then rerun re-asks nothing that was finished."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from launch.demo.responders import rule_labeler
from tests.fixtures.fake_openai import Faults, FakeOpenAI
from data_tools.curate.label import LabelConfig, load_items, main, requests_for
from carebot.llm import AsyncLLMClient, DiskCache, LLMConfig
from tests.helpers import read_jsonl

FAULTS = Faults(p429=0.1, p500=0.08, ptimeout=0.01, pmalformed=0.04, pbadjson=0.04, hang_s=2.5, seed=7)


def _inputs(data_root):
    return [str(data_root / "dialogue" / "huatuo26m_test_sample.jsonl"), str(data_root / "general" / "thucnews_titles_zh.jsonl")]


def _args(srv, inputs, out, limit=1000):
    return ["--input", *inputs, "--out", str(out), "--base-url", srv.base_url, "--model", "fake", "--timeout", "2", "--parse-retries", "6",
            "--backoff", "0.002", "--max-retries", "40", "--concurrency", "16", "--limit", str(limit), "--no-progress"]


def test_label_1000_with_faults_then_kill9_resume(tmp_path, data_root):
    inputs = [_inputs(data_root)[0], str(data_root / "general" / "wikitext2_paragraphs_en.jsonl")]
    n = min(1000, sum(len(read_jsonl(f)) for f in inputs))  # 1000 of 6000 (../shared/data); all 600 of samples/
    assert n >= 600  # 2 rounds x n requests: the kill at 700 server hits lands mid-run
    with FakeOpenAI(faults=FAULTS) as srv:
        # 1) a run that is killed with SIGKILL part-way
        out = tmp_path / "run"
        env = {**os.environ, "PYTHONPATH": os.getcwd()}
        code = f"import sys; from data_tools.curate.label import main; sys.exit(main({_args(srv, inputs, out)!r}))"
        p = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        t0 = time.monotonic()
        while srv.hits < 700 and p.poll() is None and time.monotonic() - t0 < 120:
            time.sleep(0.02)
        p.send_signal(signal.SIGKILL)
        p.wait()
        assert not (out / "train.jsonl").exists(), "killed run must not leave a final output"
        # which requests were finished (cached) at the moment of the kill
        items = load_items(inputs, 1000)
        cfg = LabelConfig(llm=LLMConfig(model="fake", base_url=srv.base_url))
        keyer = AsyncLLMClient(cfg.llm)
        cache = DiskCache(out / "llm_cache.sqlite")
        done = [(r, rnd) for rnd in (1, 2) for r in requests_for(items, cfg, rnd) if cache.get(keyer.key_for(r)) is not None]
        cache.close()
        assert 100 < len(done) < 2000, len(done)
        before = {FakeOpenAI.key(r.messages, rnd): srv.requested_keys[FakeOpenAI.key(r.messages, rnd)] for r, rnd in done}
        hits_before = srv.hits
        # 2) rerun to completion in-process
        assert main(_args(srv, inputs, out)) == 0
        after = {k: srv.requested_keys[k] for k in before}
        assert after == before, "a finished item was requested again after the restart"
        summary = json.loads((out / "summary.json").read_text())
        assert summary["llm"]["cache_hits"] == len(done)
        assert srv.hits > hits_before
        # 3) zero lost, zero duplicated: every item has both rounds, once
        rounds = [json.loads(l) for l in open(out / "rounds.jsonl", encoding="utf-8")]
        assert len(rounds) == n == len({r["id"] for r in rounds}) == summary["items"]
        assert all(len(r["answers"]) == 2 and all("error" not in a for a in r["answers"]) for r in rounds)
        # every answer labels the document, also after a bad-JSON reply and its re-ask (the re-ask is not labeled)
        by_id = {r["id"]: r["answers"] for r in rounds}
        wrong = [r.id for rnd in (1, 2) for r in requests_for(items, cfg, rnd)
                 if json.loads(rule_labeler(r.messages, r.params))["quality"] != by_id[r.id.split("#")[0]][rnd - 1]["quality"]]
        assert wrong == [], f"{len(wrong)} answers are not the document's label"
        kept = [json.loads(l) for l in open(out / "train.jsonl", encoding="utf-8")]
        dropped = [json.loads(l) for l in open(out / "dropped.jsonl", encoding="utf-8")]
        assert len(kept) + len(dropped) == n and len({k["id"] for k in kept + dropped}) == n
        assert {d["reason"] for d in dropped} <= {"domain_disagree", "score_gap"} and len(dropped) > 0
        assert all(abs(k["q1"] - k["q2"]) < 2 for k in kept)
        assert {k["domain"] for k in kept} == {"medical", "general"}
        # all fault kinds were exercised
        assert all(srv.hits_by_kind[k] > 0 for k in ("429", "500", "timeout", "malformed", "badjson"))
        # 4) a third run is entirely free
        hits = srv.hits
        assert main(_args(srv, inputs, out)) == 0
        assert srv.hits == hits


def test_mostly_given_up_is_one_line_exit_2_and_a_few_are_counted(tmp_path, data_root, capsys):
    """A labeler whose answers are mostly unusable (a small real model) does not exit 0 with a thin train.jsonl:
    below --min-labelled it is one error line, with every given-up item and its raw reply in dropped.jsonl; a few
    given up are counted and the run succeeds."""
    from carebot.cli import run

    inputs = [str(data_root / "general" / "thucnews_titles_zh.jsonl")]
    for pbad, want in ((0.9, 2), (0.05, 0)):
        out = tmp_path / f"p{pbad}"
        with FakeOpenAI(faults=Faults(pbadjson=pbad, seed=3)) as srv:
            args = _args(srv, inputs, out, limit=60)
            args[args.index("--parse-retries") + 1] = "0"
            rc = run(main, args, "carebot data label")
        cap = capsys.readouterr()
        summary = json.loads((out / "summary.json").read_text())
        failed = summary["dropped"].get("llm_failed", 0)
        dropped = read_jsonl(out / "dropped.jsonl")
        assert rc == want, (pbad, failed, cap.err)
        assert summary["llm"]["failures"] > 0 and failed == sum(d["reason"] == "llm_failed" for d in dropped)
        assert all(d["raw"] for d in dropped if d["reason"] == "llm_failed")
        if want == 2:
            err = [x for x in cap.err.strip().splitlines() if "error" in x]  # stderr also has the resolved config
            assert failed > 30 and len(err) == 1 and cap.err.strip().endswith(err[0]), cap.err
            assert err[0].startswith("carebot data label: error: ") and "below --min-labelled 0.5" in err[0]
        else:
            assert 0 < failed < 30 and f"{failed} of 60 items given up" in cap.out
