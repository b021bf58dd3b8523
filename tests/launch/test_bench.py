"""`carebot bench` on CPU: the real Trainer on the tiny recipe; its FLOP formula against FlopCounterMode."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from carebot.hardware import device_peak

REPO = Path(__file__).resolve().parents[2]


def test_bench_cpu_tokens_per_s_and_flops_match_counted_matmuls(tmp_path, small_tokenizer_dir):
    s, gbs, L, h = 128, 8, 2, 64
    p = subprocess.run([sys.executable, "-m", "carebot.cli", "bench", "--config", "tiny_stable_cpt.yaml",
                        f"data.tokenizer={small_tokenizer_dir}", f"data.seq_length={s}", "--steps", "2",
                        "model.attention_backend=local",  # FlopCounterMode has no formula for CPU SDPA kernels
                        "--warmup", "1", "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "tokens/s" in p.stdout and "FLOP check" in p.stdout
    r = json.loads((tmp_path / "bench.json").read_text())
    assert (tmp_path / "bench.md").read_text().startswith("# carebot bench")
    assert r["timed_steps"] == 2 and len(r["step_time_s_all"]) == 2 and r["tokens_per_s"] > 0
    assert r["tokens_per_step"] == gbs * s and r["device"] == "cpu" and r["mfu"] is None
    assert r["peak_memory_bytes"] > 100 * 2**20  # RSS of a process holding torch + megatron
    fc = r["flop_check"]
    # FlopCounterMode saw one real step (fwd + bwd of both micro-batches): its matmuls are the formula's
    assert abs(fc["counted_matmul_flops"] / fc["formula_flops"] - 1) < 1e-6, fc
    assert fc["formula_flops"] == r["flops_per_token"] * gbs * s
    # attention (QK^T by baddbmm, AV by bmm, both backward by bmm) over the full s x s: 12 s h per token-layer
    by = fc["counted_by_op"]
    assert by["baddbmm"] + by["bmm"] == 12 * s * h * L * gbs * s
    assert by["mm"] > 0 and fc["counted_total_flops"] == fc["counted_matmul_flops"]  # nothing else counted


def test_device_peaks():
    assert device_peak("NVIDIA H100 80GB HBM3") == ("H100", 989.0)
    assert device_peak("NVIDIA A100-SXM4-40GB") == ("A100", 312.0)
    assert device_peak("NVIDIA A800-SXM4-80GB") == ("A800", 312.0)
    assert device_peak("NVIDIA H200") == ("H200", 989.0)
    assert device_peak("NVIDIA GH200 480GB") == ("GH200", 989.0)
    assert device_peak("NVIDIA H20") == ("H20", 148.0)
    assert device_peak(None) == (None, None)
