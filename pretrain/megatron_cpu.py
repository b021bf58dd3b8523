"""The one place where megatron-core 0.16.1 is made to run without CUDA.

megatron-core hard-codes CUDA in device/RNG calls, `device="cuda"` tensors, `.cuda()` and optimizer
type checks. `apply()` patches exactly those, and ONLY when `torch.cuda.is_available()` is false, so the
CPU tests exercise the same megatron code (schedules, optimizer, dist_checkpointing, datasets) as a GPU
run. Measured and documented in docs/megatron_cpu.md. Three parts:
  1. CUDA device / RNG calls -> the CPU generator (megatron's RNG tracker then tracks CPU state);
  2. a global TorchFunctionMode mapping `device="cuda..."` kwargs to CPU and `Tensor.cuda()` to identity;
  3. `Tensor.type()` (no argument) reports `torch.cuda.*` names, for the optimizer's type checks.
"""
from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode

_APPLIED = False
_MODE: TorchFunctionMode | None = None


def _cpu_device(dev):
    if isinstance(dev, str) and dev.startswith("cuda"):
        return "cpu"
    if isinstance(dev, torch.device) and dev.type == "cuda":
        return torch.device("cpu")
    if isinstance(dev, int):  # a bare CUDA ordinal
        return "cpu"
    return dev


class _CudaToCpu(TorchFunctionMode):
    """Maps `device="cuda"` keyword arguments to CPU; `.cuda()` returns the tensor itself."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.cuda:
            return args[0]
        if "device" in kwargs:
            kwargs["device"] = _cpu_device(kwargs["device"])
        return func(*args, **kwargs)


_orig_type = torch.Tensor.type
_CUDA_NAMES = {"torch.FloatTensor": "torch.cuda.FloatTensor", "torch.HalfTensor": "torch.cuda.HalfTensor",
               "torch.BFloat16Tensor": "torch.cuda.BFloat16Tensor"}


def _type(self, dtype=None, non_blocking=False, **kw):
    if dtype is None and not kw:
        name = _orig_type(self)
        return _CUDA_NAMES.get(name, name)
    return _orig_type(self, dtype, non_blocking, **kw)


def apply() -> bool:
    """Patch megatron-core for CPU. Returns True when patched, False on a CUDA machine (nothing done)."""
    global _APPLIED, _MODE
    if torch.cuda.is_available():
        return False
    if _APPLIED:
        return True
    from megatron.core.tensor_parallel import random as mrandom

    # 1. device and RNG calls
    torch.cuda.current_device = lambda: "cpu"
    torch.cuda.get_rng_state = lambda device="cuda": torch.get_rng_state()
    torch.cuda.random.get_rng_state = torch.cuda.get_rng_state
    torch.cuda.set_rng_state = lambda state, device="cuda": torch.set_rng_state(state)
    torch.cuda.manual_seed = lambda seed: None
    torch.cuda.manual_seed_all = lambda seed: None
    torch.cuda.initial_seed = torch.initial_seed
    torch.cuda.synchronize = lambda device=None: None
    mrandom._get_cuda_rng_state = lambda device="cuda", clone=False, graph_safe=False: torch.get_rng_state()
    mrandom._set_cuda_rng_state = lambda new_state, device=-1, graph_safe=False: torch.set_rng_state(new_state)
    # 2. hard-coded device="cuda" and .cuda()
    _MODE = _CudaToCpu()
    _MODE.__enter__()
    # ... and the one such call that also runs in backward (activation recomputation), where the thread-local
    # mode above is not active: the default causal mask
    import functools

    from megatron.core.fusions import fused_softmax
    from megatron.core.transformer import utils as mutils

    @functools.lru_cache(maxsize=None)
    def _causal_mask(sq: int) -> torch.Tensor:
        return torch.triu(torch.ones(sq, sq), diagonal=1).bool()

    mutils.get_default_causal_mask = fused_softmax.get_default_causal_mask = _causal_mask
    # 3. optimizer type checks
    torch.Tensor.type = _type
    _APPLIED = True
    return True


def is_applied() -> bool:
    return _APPLIED
