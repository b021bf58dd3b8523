"""The CPU shim patches exactly what megatron-core 0.16.1 needs, and only without CUDA."""
import subprocess
import sys

SCRIPT = r"""
import torch
from pretrain import megatron_cpu
assert not torch.cuda.is_available()
t = torch.zeros(2)
assert t.type() == "torch.FloatTensor"
assert megatron_cpu.apply() is True and megatron_cpu.apply() is True  # idempotent
z = torch.zeros(3, device="cuda")            # hard-coded device="cuda" in megatron
assert z.device.type == "cpu" and z.cuda() is z
assert torch.ones(1).type() == "torch.cuda.FloatTensor"        # optimizer type checks
assert torch.ones(1).type(torch.float64).dtype == torch.float64  # conversions untouched
torch.manual_seed(3); a = torch.cuda.get_rng_state(); x = torch.rand(1)
torch.cuda.set_rng_state(a); assert torch.rand(1).item() == x.item()  # CUDA RNG calls -> CPU generator
print("ok")
"""


def test_shim_cpu_only():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


IN_PROCESS = r"""
import os, subprocess, sys
from carebot.run_config import ParallelConfig
from pretrain import distributed
distributed.init(ParallelConfig(), seed=0)
assert "MASTER_PORT" not in os.environ and "MASTER_ADDR" not in os.environ, dict(os.environ)
# a child started while this process group is alive (what a test or `carebot experiment` does) gets its own port
child = subprocess.run([sys.executable, "-c", "from carebot.run_config import ParallelConfig\n"
                        "from pretrain import distributed\ndistributed.init(ParallelConfig(), seed=0)\nprint('child ok')"],
                       capture_output=True, text=True)
assert child.returncode == 0, child.stderr[-2000:]
distributed.teardown()
print("ok")
"""


def test_a_single_process_group_leaves_the_environment_to_its_children():
    """distributed.init for one process not started by a launcher used to write MASTER_ADDR/MASTER_PORT into
    os.environ: every child inherited that port and failed with EADDRINUSE while the parent's group lived."""
    out = subprocess.run([sys.executable, "-c", IN_PROCESS], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]
