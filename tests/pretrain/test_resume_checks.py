"""Resume refuses a config that changes the run its checkpoint belongs to: a changed global batch, sequence
length or data path used to resume in silence ("resumed from ... at step 3"), and a changed schedule length
silently kept the checkpoint's schedule. Now one line names each key with its old and new value; the keys that
are safe stay free; an explicit `checkpoint.override_resume` changes a key on purpose, is recorded in the
checkpoint, and a schedule key then follows the new values from the step reached."""
from __future__ import annotations

import math

import pytest

from tests.pretrain.test_trainer import run_pretrain
from tests.helpers import metrics


@pytest.fixture(scope="module")
def base(cpt_prefixes, small_tokenizer_dir) -> list[str]:
    p = cpt_prefixes
    return [f"data.tokenizer={small_tokenizer_dir}", f"data.data_path=[0.5, {p['medical_en']}, 0.5, {p['medical_zh']}]",
            "data.seq_length=32", "train.micro_batch_size=2", "train.global_batch_size=4", "train.train_steps=10",
            "train.eval_interval=0", "train.log_interval=1", "train.tensorboard=false", "checkpoint.save_interval=100",
            "optim.lr=1e-3", "optim.min_lr=1e-4"]


@pytest.mark.slow  # multi-process / cluster run: the slow set (.ci/run runs it)
def test_resume_refuses_a_changed_run_and_records_an_override(tmp_path, base, cpt_prefixes):
    import torch

    run_pretrain(tmp_path, base + ["train.exit_after_steps=3"])
    latest = (tmp_path / "checkpoints" / "latest").read_text()
    changed = ["train.global_batch_size=8", "data.seq_length=64",
               f"data.data_path=[1.0, {cpt_prefixes['general_en']}]"]
    p = run_pretrain(tmp_path, base + changed, check=False)
    errors = [x for x in (p.stdout + p.stderr).splitlines() if "error:" in x]
    assert p.returncode == 2 and len(errors) == 1, (p.stdout + p.stderr)[-3000:]
    for needle in ("train.global_batch_size: 4 -> 8", "data.seq_length: 32 -> 64", "data.data_path: [0.5, ",
                   "checkpoint.override_resume=[data.data_path,data.seq_length,train.global_batch_size]"):
        assert needle in errors[0], errors[0]
    assert "Traceback" not in p.stderr and (tmp_path / "checkpoints" / "latest").read_text() == latest

    # free keys (intervals, micro batch at equal global batch) and one schedule key overridden on purpose
    free = ["train.log_interval=2", "train.micro_batch_size=1", "checkpoint.save_interval=50"]
    p = run_pretrain(tmp_path, base + free + ["train.train_steps=14", "checkpoint.override_resume=[train.train_steps]"])
    assert "resume override (checkpoint.override_resume): train.train_steps: 10 -> 14 from step 3" in p.stdout
    rows = metrics(tmp_path)
    assert [r["step"] for r in rows] == list(range(1, 15))
    # the new schedule from step 3 on: 10% warmup of 14 steps (1), cosine 1e-3 -> 1e-4 reached one past the end
    lr = lambda k: 1e-4 + 0.5 * (1e-3 - 1e-4) * (1 + math.cos(math.pi * (k - 1) / 14))
    assert [r["lr"] for r in rows if r["step"] > 3] == pytest.approx([lr(k) for k in range(4, 15)], rel=1e-9)
    common = torch.load(tmp_path / "checkpoints" / "iter_0000014" / "common.pt", weights_only=True)
    assert common["carebot"]["resume_overrides"] == [{"step": 3, "key": "train.train_steps", "old": 10, "new": 14}]
    assert common["carebot"]["resume_keys"]["train.train_steps"] == 14


def test_override_of_an_unknown_key_is_one_line(tmp_path, base, capsys):
    from carebot import cli

    rc = cli.main(["pretrain", "--config", "tiny_stable_cpt.yaml", f"output_dir={tmp_path}", *base,
                   "checkpoint.override_resume=[train.log_interval]"])
    assert rc == 2 and "checkpoint.override_resume" in capsys.readouterr().err
