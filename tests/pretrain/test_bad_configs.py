"""Bad training configs: each is exit 2 with one `error:` line and no traceback, and none trains silently.
Each runs as the console script does, in this process, except the out-of-memory case."""
from __future__ import annotations

import pytest

from tests.helpers import run_stage


@pytest.fixture(scope="module")
def base(cpt_prefixes, small_tokenizer_dir) -> list[str]:
    return [f"data.tokenizer={small_tokenizer_dir}", f"data.data_path=[{cpt_prefixes['medical_en']}]",
            "data.seq_length=32", "train.micro_batch_size=2", "train.global_batch_size=2", "train.train_steps=1",
            "train.eval_interval=0", "train.tensorboard=false"]


CASES = {  # override -> what the one line must say
    "model.num_layers=0": "model.num_layers=0: must be >= 1",
    "model.ffn_hidden_size=0": "model.ffn_hidden_size=0: must be >= 1",
    "model.hidden_dropout=1.5": "model.hidden_dropout=1.5: must be in [0, 1)",
    "stage=sft": "but carebot pretrain runs the cpt stage",
    "data.tokenizer={empty}": "no tokenizer files",
    "checkpoint.load={empty}": "checkpoint.load: no checkpoint at",
    "checkpoint.load=/nonexistent/ckpt": "checkpoint.load: no checkpoint at /nonexistent/ckpt",
    "train.precision=bf16": "train.precision=bf16 needs a CUDA device",
    # megatron-core's local attention holds the 100k x 100k scores (40 GB): one clear line, not a traceback (the
    # default sdpa attention is linear in the sequence, and trains this in ~4 minutes)
    "data.seq_length=100000 model.attention_backend=local": "out of memory",
}


# The process-group cases run in this process, as `carebot pretrain` does (seconds of megatron import saved per
# case); the out-of-memory one in a child of its own, so that a 40 GB attempt never lands in the test runner.
IN_A_CHILD = {"data.seq_length=100000 model.attention_backend=local"}


@pytest.mark.parametrize("override", list(CASES))
def test_bad_config_is_one_line(tmp_path, base, override, capsys):
    import torch

    from carebot import cli

    if "bf16" in override and torch.cuda.is_available():
        pytest.skip("bf16 is valid on a GPU")
    (tmp_path / "empty").mkdir()
    over = override.format(empty=tmp_path / "empty").split()
    if override in IN_A_CHILD:
        p = run_stage("pretrain.train", "tiny_stable_cpt.yaml", tmp_path / "run", base + over, check=False, timeout=300)
        rc, err = p.returncode, p.stderr
    else:
        rc = cli.main(["pretrain", "--config", "tiny_stable_cpt.yaml", f"output_dir={tmp_path / 'run'}", *base, *over])
        err = capsys.readouterr().err
    errors = [l for l in err.splitlines() if "error:" in l]
    assert rc == 2 and "Traceback" not in err, err[-2000:]
    assert len(errors) == 1 and CASES[override] in errors[0], errors
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
