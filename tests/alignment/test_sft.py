"""SFT: loss only on assistant tokens of real CMtMedQA dialogues; packing boundaries; training lowers the
validation loss and keeps the best checkpoint; TP=2 / PP=2 match TP=PP=1."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from alignment.chat_data import render_dialogue, shift
from alignment.sft import SFTDataset, read_dialogues, tokenize_dialogues
from tests.helpers import metrics, run_stage


def test_loss_mask_covers_only_assistant_replies(llama3_tokenizer, cmtmedqa):
    """Rendered with the real LLaMA-3 template: masked tokens are exactly the assistant replies + <|eot_id|>;
    user turns, BOS and role headers (including the assistant header) carry zero loss."""
    tok = llama3_tokenizer
    dialogue = next(d for d in read_dialogues(cmtmedqa, 50) if len(d) >= 4)
    ids, mask = render_dialogue(tok, dialogue)
    assert tok.decode(ids) == tok.apply_chat_template(dialogue, tokenize=False)
    # group the masked tokens into contiguous runs: one per assistant turn, each = content + <|eot_id|>
    runs, cur = [], []
    for i, m in zip(ids, mask):
        if m:
            cur.append(i)
        elif cur:
            runs.append(cur)
            cur = []
    runs += [cur] if cur else []
    replies = [m["content"].strip() for m in dialogue if m["role"] == "assistant"]
    assert [tok.decode(r) for r in runs] == [r + "<|eot_id|>" for r in replies]
    unmasked = tok.decode([i for i, m in zip(ids, mask) if not m])
    for m in dialogue:
        if m["role"] == "user":
            assert m["content"].strip() in unmasked
    assert unmasked.count("<|start_header_id|>assistant<|end_header_id|>") == len(replies)
    # after the shift, position t is trained iff it predicts an assistant token
    tokens, labels, loss_mask = shift(ids, mask)
    assert (loss_mask == np.asarray(mask[1:], dtype=np.float32)).all()
    trained = tok.decode(labels[loss_mask > 0].tolist())
    assert trained == "".join(r + "<|eot_id|>" for r in replies)
    user0 = tok(dialogue[0]["content"], add_special_tokens=False)["input_ids"]
    assert loss_mask[: len(user0) + 4].sum() == 0  # BOS + header + first patient turn: no loss


def test_packing_keeps_dialogues_apart(small_tokenizer_dir, cmtmedqa):
    from carebot.tokenizer import load_tokenizer

    tok = load_tokenizer(small_tokenizer_dir)
    dialogues = [d[:2] for d in read_dialogues(cmtmedqa, 30)]  # first exchange only: short documents
    docs, stats = tokenize_dialogues(tok, dialogues, 512)
    assert stats["kept"] == 30
    plain = SFTDataset(docs, 512, tok.pad_token_id, packing=False, shuffle=False)
    packed = SFTDataset(docs, 512, tok.pad_token_id, packing=True, shuffle=False)
    assert packed.epoch_size < plain.epoch_size  # several dialogues per window
    w = packed[0]
    lens = [len(d[0]) for d in packed.windows[packed.orders[0][0]]]
    assert len(lens) >= 2
    starts = np.cumsum([0] + lens)
    # position ids restart at every dialogue; the loss mask is each dialogue's own, nothing crosses a boundary
    for k, (a, b) in enumerate(zip(starts[:-1], starts[1:])):
        assert w["position_ids"][a:b].tolist() == list(range(b - a))
        assert torch.equal(w["loss_mask"][a:b], plain[k]["loss_mask"][: b - a])
        assert torch.equal(w["labels"][a:b], plain[k]["labels"][: b - a])
    assert w["loss_mask"][starts[-1]:].sum() == 0
    # attention: causal inside a dialogue, nothing across (True = masked)
    m = w["attention_mask"][0]
    a, b, c = starts[0], starts[1], starts[2]
    assert not m[b - 1, a:b].any() and m[b - 1, b:].all()
    assert m[b, a:b].all() and not m[b, b] and m[b, b + 1:].all()
    assert not m[c - 1, b:c].any()


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory, tiny_base, init_ckpt, cmtmedqa):
    """2 epochs over 90 real dialogues (10 more held out), packed, from the shared init checkpoint."""
    out = tmp_path_factory.mktemp("sft")
    over = tiny_base + [f"data.data_path=[{cmtmedqa}]", f"checkpoint.init_from={init_ckpt}", "train.epochs=2",
                        "optim.lr=3e-3", "optim.min_lr=3e-4", "train.eval_interval=4",
                        "stage_args={max_dialogues: 100, valid_fraction: 0.1, packing: true}"]
    run_stage("alignment.sft", "tiny_sft.yaml", out, over)
    return out, over


def test_sft_lowers_validation_loss_and_keeps_best(sft_run):
    out, _ = sft_run
    m = metrics(out)
    assert len(m) == m[-1]["step"] > 4  # steps from epochs x packed windows / batch
    val = [r["val_loss"] for r in m if "val_loss" in r]
    assert len(val) >= 3
    assert val[-1] < val[0] - 0.3, val
    from pretrain.checkpoint import load_meta, resolve

    best = resolve(out / "best")
    meta = load_meta(best)
    assert meta["val_loss"] == min(val)
    assert meta["iteration"] == next(r["step"] for r in m if r.get("val_loss") == min(val))


def _check_layout(tmp_path, sft_run, layout):
    out, over = sft_run
    run_stage("alignment.sft", "tiny_sft.yaml", tmp_path, over + layout + ["train.exit_after_steps=3"], nproc=2)
    ref = [r["loss"] for r in metrics(out)[:3]]
    got = [r["loss"] for r in metrics(tmp_path)]
    assert len(got) == 3
    for a, b in zip(got, ref):
        assert abs(a - b) / abs(b) < 1e-4, (got, ref)


@pytest.mark.slow  # multi-process / cluster run: the slow set (.ci/run runs it)
def test_sft_tp2_matches_single_process(tmp_path, sft_run):
    _check_layout(tmp_path, sft_run, ["parallel.tensor=2"])


@pytest.mark.slow
def test_sft_pp2_matches_single_process(tmp_path, sft_run):
    _check_layout(tmp_path, sft_run, ["parallel.pipeline=2"])


def test_bad_dialogue_file_is_one_clear_line(tmp_path, tiny_base, capsys):
    from alignment.sft import main

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n{"messages": 3}\n')
    assert main(["--config", "tiny_sft.yaml", f"output_dir={tmp_path}", *tiny_base, f"data.data_path=[{bad}]"]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:2" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert main(["--config", "tiny_sft.yaml", f"output_dir={tmp_path}", *tiny_base,
                 "data.data_path=[/nonexistent.jsonl]"]) == 2
    assert "SFT data file not found: /nonexistent.jsonl" in capsys.readouterr().err
