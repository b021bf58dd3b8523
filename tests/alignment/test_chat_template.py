"""No chat template is ever guessed: SFT on a base model's tokenizer (none) without `stage_args.chat_template`
is one line; with `chatml` it trains, and the loss mask covers exactly each assistant reply and its
end-of-turn token (not the newline ChatML puts after it)."""
from __future__ import annotations

import pytest

from alignment.chat_data import render_dialogue, use_chat_template
from carebot.tokenizer import load_tokenizer
from tests.helpers import metrics, run_stage

DIALOGUE = [{"role": "user", "content": "I have a headache."}, {"role": "assistant", "content": "Drink water and rest."},
            {"role": "user", "content": "It is still there."}, {"role": "assistant", "content": "Then see a doctor."}]


def test_chatml_mask_is_reply_plus_end_of_turn(chatml_base_tokenizer_dir, capsys):
    tok = load_tokenizer(chatml_base_tokenizer_dir)
    assert not tok.chat_template
    assert use_chat_template(tok, "chatml", "here").startswith("chatml")
    ids, mask = render_dialogue(tok, DIALOGUE)
    runs, cur = [], []
    for i, m in zip(ids, mask):
        if m:
            cur.append(i)
        elif cur:
            runs, cur = runs + [cur], []
    runs += [cur] if cur else []
    assert [tok.decode(r) for r in runs] == ["Drink water and rest.<|im_end|>", "Then see a doctor.<|im_end|>"]


def _sft(tmp_path, tok_dir, cmtmedqa, extra):
    return run_stage("alignment.sft", "tiny_sft.yaml", tmp_path, [
        f"data.tokenizer={tok_dir}", f"data.data_path=[{cmtmedqa}]", "checkpoint.init_from=null", "train.epochs=null",
        "train.train_steps=2", "train.micro_batch_size=2", "train.global_batch_size=2", "train.eval_interval=0",
        "data.seq_length=128", "stage_args.max_dialogues=8", "stage_args.valid_fraction=0", "train.tensorboard=false",
        "checkpoint.keep_best=false", *extra], check=False, timeout=600)


@pytest.mark.slow  # multi-process / cluster run: the slow set (.ci/run runs it)
def test_sft_on_a_base_tokenizer_needs_a_named_template(tmp_path, chatml_base_tokenizer_dir, cmtmedqa):
    p = _sft(tmp_path / "none", chatml_base_tokenizer_dir, cmtmedqa, [])
    errors = [l for l in p.stderr.splitlines() if "error:" in l]
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert len(errors) == 1 and "has no chat template" in errors[0] and "stage_args.chat_template" in errors[0]
    p = _sft(tmp_path / "chatml", chatml_base_tokenizer_dir, cmtmedqa, ["stage_args.chat_template=chatml"])
    assert p.returncode == 0, p.stderr[-3000:]
    assert "chat template: chatml (stage_args.chat_template)" in p.stdout
    assert [r["step"] for r in metrics(tmp_path / "chatml")] == [1, 2]
    assert "chat_template: chatml" in (tmp_path / "chatml" / "config.yaml").read_text()
