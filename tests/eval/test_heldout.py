"""`carebot eval loss`: held-out text and assistant-reply NLL, checked against transformers' own loss."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import REPO, read_jsonl


@pytest.fixture(scope="module")
def heldout(data_root, tmp_path_factory):
    recs = read_jsonl(data_root / "dialogue" / "medquad_en_sample.jsonl")[-4:]
    rows = [{"id": f"d{i}", "messages": [{"role": "user", "content": r["question"]},
                                         {"role": "assistant", "content": r["answer"]}]} for i, r in enumerate(recs)]
    rows.append({"id": "t0", "text": read_jsonl(data_root / "general" / "wikitext2_paragraphs_en.jsonl", 1)[0]["text"]})
    p = tmp_path_factory.mktemp("heldout") / "heldout.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p, rows


def test_text_and_reply_nll_equal_transformers_loss(tiny_llama3_lm_dir, heldout):
    import torch
    from transformers import AutoModelForCausalLM

    from alignment.chat_data import render_dialogue
    from carebot.tokenizer import load_tokenizer
    from eval.heldout import heldout_loss

    path, rows = heldout
    res, items = heldout_loss(str(tiny_llama3_lm_dir), rows, max_tokens=256, progress=False)
    tok = load_tokenizer(tiny_llama3_lm_dir)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama3_lm_dir), dtype=torch.float32).eval()
    t_sum = t_n = r_sum = r_n = 0.0
    with torch.no_grad():
        for row, item in zip(rows, items):
            msgs = row.get("messages")
            text = "\n".join(m["content"].strip() for m in msgs) if msgs else row["text"]
            ids = torch.tensor([tok(text)["input_ids"][:256]])
            assert ids[0, 0] == tok.bos_token_id  # the tokenizer's own BOS policy
            loss = float(model(input_ids=ids, labels=ids).loss)
            assert item["text_nll"] == pytest.approx(loss, rel=1e-5)
            t_sum, t_n = t_sum + loss * (ids.shape[1] - 1), t_n + ids.shape[1] - 1
            if msgs:
                rids, mask = render_dialogue(tok, msgs)
                x = torch.tensor([rids[:256]])
                labels = torch.where(torch.tensor([mask[:256]]), x, torch.tensor(-100))
                n = int((labels[0, 1:] != -100).sum())
                assert n > 10
                loss = float(model(input_ids=x, labels=labels).loss)
                assert item["reply_nll"] == pytest.approx(loss, rel=1e-5)
                r_sum, r_n = r_sum + loss * n, r_n + n
            else:
                assert item["reply_nll"] is None
    assert res["text_tokens"] == t_n and res["reply_tokens"] == r_n
    assert res["text_nll"] == pytest.approx(t_sum / t_n, rel=1e-5)
    assert res["reply_nll"] == pytest.approx(r_sum / r_n, rel=1e-5)
    assert res["chat_template"] == "the tokenizer's own"


def test_cli_writes_report_and_refuses_a_bad_record_in_one_line(tiny_llama3_lm_dir, heldout, tmp_path):
    path, _ = heldout
    cmd = [sys.executable, "-m", "carebot.cli", "eval", "loss", "--model", str(tiny_llama3_lm_dir), "--no-progress"]
    p = subprocess.run(cmd + ["--input", str(path), "--out", str(tmp_path / "ok"), "--limit", "2"], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    res = json.loads((tmp_path / "ok" / "loss.json").read_text())
    assert res["records"] == 2 and res["reply_tokens"] > 0 and 0 < res["text_nll"] < 20
    assert len(read_jsonl(tmp_path / "ok" / "loss_items.jsonl")) == 2

    bad = tmp_path / "bad.jsonl"
    bad.write_text(path.read_text() + json.dumps({"id": "x", "question": "no text here"}) + "\n")
    p = subprocess.run(cmd + ["--input", str(bad), "--out", str(tmp_path / "bad")], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2
    err = [line for line in p.stderr.splitlines() if "error" in line]
    assert len(err) == 1 and "record 6" in err[0] and "'text'" in err[0], p.stderr[-2000:]
    assert "Traceback" not in p.stderr
    assert not (tmp_path / "bad" / "loss.json").exists()
