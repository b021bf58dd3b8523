"""The demo's own choices: its held-out split is held out, and a run is never resumed with other options."""
from __future__ import annotations

import json
import subprocess
import sys

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
