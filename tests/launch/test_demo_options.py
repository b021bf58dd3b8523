"""The demo's own choices: its held-out split is held out, and a run is never resumed with other options."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO, read_jsonl


@pytest.mark.parametrize("quick", [True, False])
def test_heldout_medical_split_is_in_no_training_file(data_root, tmp_path, quick):
    from launch.demo.context import Ctx
    from launch.demo.curation_steps import HELD_OUT, SFT_SOURCES, s_corpus, s_sft_data

    ctx = Ctx(out=tmp_path, data=data_root, quick=quick)
    s_corpus(ctx)
    counts = s_sft_data(ctx)
    held = read_jsonl(tmp_path / "sft_data" / "heldout_medical.jsonl")
    assert counts["held_out"] == len(held) == HELD_OUT * len(SFT_SOURCES)
    trained = {r["text"] for f in (tmp_path / "corpus").glob("raw-*.jsonl") for r in read_jsonl(f)}
    assert len(trained) > 500
    sft = [r for lang in ("zh", "en") for r in read_jsonl(tmp_path / "sft_data" / f"sft_{lang}.jsonl")]
    assert len(sft) == counts["dialogues"] > 0
    trained |= {m["content"] for r in sft for m in r["messages"]}
    for r in held:
        q, a = (m["content"] for m in r["messages"])
        assert q not in trained and a not in trained and f"{q}\n{a}" not in trained
    # the held-out items are each source's last ones
    for rel in SFT_SOURCES:
        tail = read_jsonl(data_root / rel)[-HELD_OUT:]
        assert {t["question"] for t in tail} <= {r["messages"][0]["content"] for r in held}


def _demo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "carebot.cli", "demo", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)


def test_resuming_with_other_options_is_one_line_and_touches_nothing(tmp_path):
    out = tmp_path / "demo"
    out.mkdir()
    old = {"data": "x", "quick": False, "tokenizer": "bpe", "base_model": "", "chat_template": None}
    (out / "demo.json").write_text(json.dumps(old))
    (out / "corpus").mkdir()
    p = _demo("--out", str(out), "--quick")
    assert p.returncode == 2
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and "other options" in err[0] and "quick False -> True" in err[0] and "--fresh" in err[0], p.stderr
    assert json.loads((out / "demo.json").read_text()) == old
    assert sorted(x.name for x in out.iterdir()) == ["corpus", "demo.json"]


def test_base_model_that_is_not_a_model_dir_is_one_line(tmp_path, tiny_llama3_lm_dir):
    p = _demo("--out", str(tmp_path / "d"), "--base-model", str(tmp_path))
    assert p.returncode == 2 and "not an HF model directory" in p.stderr and "Traceback" not in p.stderr
    p = _demo("--out", str(tmp_path / "d"), "--base-model", str(tiny_llama3_lm_dir), "--tokenizer", "llama3")
    assert p.returncode == 2 and "brings its own tokenizer" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "d").exists()


def test_base_model_demo_sets_no_architecture_key(tmp_path):
    """`--base-model`: the architecture comes from the checkpoint; what the demo adds is layout, batch, lr, steps."""
    from launch.demo.context import Ctx
    from launch.demo.model_steps import REAL_SFT, _chat, _cpt_overrides, _init_from, _recipe
    from pretrain.arch import ARCH_KEYS

    ctx = Ctx(out=tmp_path, data=tmp_path, quick=True, base_model=str(tmp_path / "hf"), chat_template="chatml")
    args = [a for st in ("stable", "boost", "sft", "dpo") for a in _recipe(ctx, st) + _init_from(ctx, st)]
    args += _cpt_overrides(ctx, "stable") + REAL_SFT + _chat(ctx)
    model_keys = {a.split("=")[0].removeprefix("model.") for a in args if a.startswith("model.")}
    assert model_keys and not model_keys & set(ARCH_KEYS), model_keys
    assert f"checkpoint.init_from={tmp_path / 'hf'}" in _init_from(ctx, "stable")
    assert f"data.tokenizer={tmp_path / 'hf'}" in _cpt_overrides(ctx, "stable")
    assert _recipe(ctx, "sft")[:2] == ["--config", "sft.yaml"] and "stage_args.chat_template=chatml" in _chat(ctx)
    tiny = Ctx(out=tmp_path, data=tmp_path, quick=True)
    assert _recipe(tiny, "sft") == ["--config", "tiny_sft.yaml"] and _init_from(tiny, "stable") == []


def test_llm_choice_that_is_none_of_the_three_is_one_line(tmp_path):
    for args, says in ((["--llm", "gpt4"], "rules, serve, or an endpoint's base URL"),
                       (["--llm", "serve", "--llm-model", "x"], "--llm-model names a model of your endpoint")):
        p = _demo("--out", str(tmp_path / "d"), *args)
        assert p.returncode == 2 and says in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert not (tmp_path / "d").exists()


def test_a_real_model_gets_fewer_items_and_patient_requests(tmp_path):
    """`--llm serve` / URL: the LLM steps send fewer items, eight at a time (what the server batches), with a long wait for each; the
    rule-based endpoint keeps the counts and the commands' own defaults."""
    from launch.demo.context import LLM_ITEMS, Ctx

    rules, model = (Ctx(out=tmp_path, data=tmp_path, quick=True, llm_kind=k) for k in ("rules", "model"))
    assert rules.llm_args() == [] and rules.llm_args("--judge-") == []
    assert model.llm_args() == ["--concurrency", "8", "--timeout", "300"]
    assert model.llm_args("--judge-") == ["--judge-concurrency", "8", "--judge-timeout", "300"]
    for what in LLM_ITEMS["rules"]:
        assert 0 < model.llm_items(what) < rules.llm_items(what)
    full = Ctx(out=tmp_path, data=tmp_path, quick=False, llm_kind="model")
    assert all(full.llm_items(w) > model.llm_items(w) for w in LLM_ITEMS["model"])


def test_a_real_labeler_that_keeps_too_few_labels_leaves_the_classifiers_the_rule_labels(tmp_path, data_root):
    """`--llm serve` with a model that gives up on most items: the demo's label step reports the model's counts,
    goes on, and the domain classifier / DataRater train on the rule-based labels of the same documents (said in
    the counts). A real model that labels enough keeps its own labels."""
    from launch.demo.context import Ctx
    from launch.demo.curation_steps import MIN_LABELS_PER_DOMAIN, s_corpus, s_label, s_rules
    from tests.fixtures.fake_openai import Faults, FakeOpenAI

    for pbad, own in ((0.95, False), (0.0, True)):
        ctx = Ctx(out=tmp_path / f"p{pbad}", data=data_root, quick=True, llm_kind="model", llm_name="a model")
        s_corpus(ctx)
        s_rules(ctx)
        with FakeOpenAI(faults=Faults(pbadjson=pbad, seed=1)) as srv:
            ctx.base_url, ctx.models = srv.base_url, {"label": "fake"}
            c = s_label(ctx)
        n = ctx.llm_items("label")
        assert c["labelled"] == n and c["llm_first_valid"] + c["llm_after_reask"] + c["llm_given_up"] == 2 * n
        train = read_jsonl(Path(c["train_file"]))
        assert {r["domain"] for r in train} == {"medical", "general"}
        if own:
            assert c["classifiers_trained_on"] == "label" and c["llm_given_up"] == 0
        else:
            assert c["llm_given_up"] > 1.3 * n and min(c.get("kept_medical", 0), c.get("kept_general", 0)) < MIN_LABELS_PER_DOMAIN
            assert c["classifiers_trained_on"] == "label_rules (rule-based)" and c["rules_kept_consistent"] == len(train)
            assert Path(c["train_file"]).parent.name == "label_rules"
