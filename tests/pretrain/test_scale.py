"""The scale knobs reach megatron-core (read back from the built model, DDP wrapper and optimizer) and change
nothing numerically; an impossible combination is one line before any process group starts."""
from __future__ import annotations

import pytest

from tests.helpers import metrics, run_stage, tiny_cpt_overrides


@pytest.fixture(scope="module")
def base(cpt_prefixes, small_tokenizer_dir) -> list[str]:
    return tiny_cpt_overrides(cpt_prefixes, small_tokenizer_dir, global_batch=8, steps=5)


def _run(tmp_path, name, over, nproc=1) -> tuple[list[float], str]:
    p = run_stage("pretrain.train", "tiny_stable_cpt.yaml", tmp_path / name, over, nproc=nproc)
    line = next(x for x in p.stdout.splitlines() if x.startswith("[carebot] scale:"))
    return [r["loss"] for r in metrics(tmp_path / name)], line


@pytest.mark.slow  # multi-process / cluster run: the slow set (.ci/run runs it)
def test_recompute_reaches_megatron_and_is_exact(tmp_path, base):
    ref, line = _run(tmp_path, "none", base)
    assert "recompute_granularity=None" in line
    assert "core_attention=SDPAttention " in line, line  # attention_backend=auto without TE: the SDPA spec
    for name, over, want in (
            ("selective", ["parallel.recompute=selective"], "recompute_granularity=selective recompute_method=None"),
            ("full", ["parallel.recompute=full", "parallel.recompute_method=block", "parallel.recompute_num_layers=1"],
             "recompute_granularity=full recompute_method=block recompute_num_layers=1")):
        losses, line = _run(tmp_path, name, base + over)
        assert want in line, line
        assert losses == pytest.approx(ref, rel=1e-6, abs=0), (name, losses, ref)


@pytest.mark.slow  # multi-process / cluster run: the slow set (.ci/run runs it)
def test_overlapped_grad_reduce_matches_plain_dp2(tmp_path, base):
    ref, line = _run(tmp_path, "plain", base, nproc=2)
    assert "overlap_grad_reduce=False" in line
    over, line = _run(tmp_path, "overlap", base + ["parallel.overlap_grad_reduce=true"], nproc=2)
    assert "overlap_grad_reduce=True overlap_param_gather=False distributed_optimizer=False" in line, line
    assert len(over) == 5 and over == pytest.approx(ref, rel=1e-6, abs=0), (over, ref)


@pytest.mark.parametrize("override,needle", [
    (["parallel.overlap_param_gather=true"], "needs parallel.distributed_optimizer=true"),
    (["parallel.distributed_optimizer=true", "parallel.overlap_grad_reduce=true"], "cannot checkpoint that optimizer"),
    (["parallel.recompute=layers"], "parallel.recompute='layers': one of none, selective, full"),
    (["parallel.recompute=full", "parallel.recompute_num_layers=9"], "between 1 and the 2 layers"),
    (["train.fp8=hybrid"], "needs Transformer Engine and CUDA"),
    (["parallel.context=2"], "context parallelism runs only inside Transformer Engine's attention"),
], ids=["param-gather-without-dist-opt", "overlap-with-dist-opt", "recompute-name", "recompute-layers", "fp8-without-te",
         "context-parallel"])
def test_impossible_combination_is_one_line(tmp_path, base, override, needle, capsys):
    from pretrain.train import main

    assert main(["--config", "tiny_stable_cpt.yaml", f"output_dir={tmp_path}", *base, *override]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err, err
    assert not (tmp_path / "checkpoints").exists()
