"""The SDPA core attention (`model.attention_backend=sdpa`) against megatron-core's local one: the same
outputs and gradients on the same inputs, and the same training curves (fp32, CPU)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import REPO, metrics, refused_in_process, run_stage, tiny_cpt_overrides

UNIT = r"""
import torch
from megatron.core.transformer import TransformerConfig
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnMaskType
from carebot.run_config import ParallelConfig
from pretrain import distributed
from pretrain.attention import SDPAttention

distributed.init(ParallelConfig(), seed=0)
cfg = TransformerConfig(num_layers=1, hidden_size=64, num_attention_heads=8, num_query_groups=2, kv_channels=8,
                        attention_dropout=0.0, use_cpu_initialization=True, masked_softmax_fusion=False)
kw = dict(config=cfg, layer_number=1, attn_mask_type=AttnMaskType.causal, attention_type="self")
ref, new = DotProductAttention(**kw), SDPAttention(**kw)
s, b = 48, 3
torch.manual_seed(0)
q = torch.randn(s, b, 8, 8, requires_grad=True)
k = torch.randn(s, b, 2, 8, requires_grad=True)
v = torch.randn(s, b, 2, 8, requires_grad=True)
# packed SFT: two documents per row, block-diagonal causal (True = masked), as alignment/sft.py builds it
doc = torch.zeros(s, dtype=torch.long); doc[20:] = 1
block = ~((doc[:, None] == doc[None, :]) & torch.ones(s, s, dtype=torch.bool).tril())
causal = ~torch.ones(s, s, dtype=torch.bool).tril()
worst = 0.0
for mask in (None, causal[None, None].expand(b, 1, s, s), block[None, None].expand(b, 1, s, s)):
    outs = []
    for m in (ref, new):
        for t in (q, k, v):
            t.grad = None
        o = m(q, k, v, mask, AttnMaskType.causal)
        (o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum().backward()
        outs.append([o.detach().clone()] + [t.grad.clone() for t in (q, k, v)])
    for a, c in zip(*outs):
        assert a.shape == c.shape, (a.shape, c.shape)
        worst = max(worst, float((a - c).abs().max()))
print("WORST", worst)
assert worst < 1e-5, worst
"""


def test_sdpa_matches_local_attention_outputs_and_grads():
    """Causal (no mask), an explicit causal mask and packed SFT's block mask, GQA 8 heads / 2 groups."""
    p = subprocess.run([sys.executable, "-c", UNIT], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    assert "WORST" in p.stdout


def _curve(out, recipe: str, over: list[str], backend: str, nproc: int = 1) -> list[float]:
    p = run_stage("pretrain.train" if recipe.endswith("cpt.yaml") else "alignment.sft", recipe, out / backend,
                  over + [f"model.attention_backend={backend}"], nproc=nproc)
    core = {"local": "DotProductAttention", "sdpa": "SDPAttention"}[backend]
    assert f"core_attention={core} " in p.stdout, p.stdout[-2000:]  # read back from the built model
    return [r["loss"] for r in metrics(out / backend)]


@pytest.fixture(scope="module")
def cpt(cpt_prefixes, small_tokenizer_dir) -> list[str]:
    return tiny_cpt_overrides(cpt_prefixes, small_tokenizer_dir, global_batch=4, steps=10)


LAYOUTS = [pytest.param([], 1, id="tp1", marks=pytest.mark.slow),
           pytest.param(["parallel.tensor=2"], 2, id="tp2", marks=pytest.mark.slow),
           pytest.param(["parallel.pipeline=2"], 2, id="pp2", marks=pytest.mark.slow)]


@pytest.mark.parametrize("layout,nproc", LAYOUTS)
def test_sdpa_cpt_curve_equals_local(tmp_path, cpt, layout, nproc):
    local = _curve(tmp_path, "tiny_stable_cpt.yaml", cpt + layout, "local", nproc)
    sdpa = _curve(tmp_path, "tiny_stable_cpt.yaml", cpt + layout, "sdpa", nproc)
    assert len(local) == len(sdpa) == 10 and local[-1] < local[0]
    for a, b in zip(sdpa, local):
        assert abs(a - b) <= 1e-5 * abs(b), (sdpa, local)


@pytest.mark.slow  # multi-process / cluster run: the slow set (.ci/run runs it)
def test_sdpa_packed_sft_curve_equals_local(tmp_path, small_tokenizer_dir, data_root):
    over = [f"data.tokenizer={small_tokenizer_dir}", f"data.data_path=[{data_root / 'dialogue' / 'cmtmedqa_test.jsonl'}]",
            "checkpoint.init_from=null", "train.epochs=null", "train.train_steps=10", "train.eval_interval=0",
            "train.log_interval=1", "train.tensorboard=false", "checkpoint.save_interval=1000",
            "stage_args={max_dialogues: 60, valid_fraction: 0.0, packing: true}"]
    local = _curve(tmp_path, "tiny_sft.yaml", over, "local")
    sdpa = _curve(tmp_path, "tiny_sft.yaml", over, "sdpa")
    assert len(local) == len(sdpa) == 10
    for a, b in zip(sdpa, local):
        assert abs(a - b) <= 1e-5 * abs(b), (sdpa, local)


def test_unknown_or_impossible_backend_is_one_line(tmp_path, cpt, capsys):
    for backend, needle in (("flash", "one of auto, sdpa, local, te"), ("te", "needs Transformer Engine")):
        rc, stderr = refused_in_process(capsys, "pretrain", "tiny_stable_cpt.yaml", tmp_path / backend,
                                        cpt + [f"model.attention_backend={backend}"])
        err = [line for line in stderr.splitlines() if line.strip()]
        assert rc == 2 and needle in stderr and len(err) == 1, stderr[-2000:]
