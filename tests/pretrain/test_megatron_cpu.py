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
