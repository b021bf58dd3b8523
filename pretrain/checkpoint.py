"""Checkpoints with megatron-core `dist_checkpointing`: resharding on load (save at TP=1, load at TP=2),
atomic (saved under `iter_N.tmp`, renamed, and only then the `latest` pointer moves), complete (model,
optimizer, LR scheduler, data position, RNG states)."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading
from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing
from megatron.core import parallel_state as mpu
from megatron.core.dist_checkpointing.mapping import ShardedObject
from megatron.core.tensor_parallel import get_cuda_rng_tracker

from carebot.errors import CareBotError

LATEST = "latest"


class CheckpointError(CareBotError, RuntimeError):
    """A checkpoint that cannot be loaded or written (missing, truncated, other layout); says what to change."""


def _layout() -> list[int]:
    return [mpu.get_pipeline_model_parallel_world_size(), mpu.get_tensor_model_parallel_world_size(),
            mpu.get_data_parallel_world_size()]


def _rng_state() -> ShardedObject:
    state = {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
             "tracker": get_cuda_rng_tracker().get_states()}
    offset = (mpu.get_pipeline_model_parallel_rank(), mpu.get_tensor_model_parallel_rank(),
              mpu.get_data_parallel_rank())
    return ShardedObject("rng_state", state, tuple(_layout()), offset, replica_id=0)


def resolve(path: str | Path) -> Path | None:
    """A checkpoint root (with a `latest` pointer) or an `iter_*` dir -> the complete iteration dir, or None."""
    p = Path(path)
    if (p / LATEST).exists():
        it = p / (p / LATEST).read_text().strip()
        if not (it / "metadata.json").exists():
            raise CheckpointError(f"checkpoint {it} named by {p / LATEST} is incomplete (no metadata.json)")
        return it
    if (p / "metadata.json").exists():
        return p
    return None


@contextlib.contextmanager
def _signals_held():
    """Hold SIGUSR1/SIGTERM while saving. SLURM signals every process of a job step; processes started during a
    save (megatron's writer Manager, which then lives on, and its forked writers) inherit this mask, so such a
    signal cannot kill them and break the save it asked for. The trainer receives it when the save is done."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def save(root: str | Path, iteration: int, model, optimizer, scheduler, extra: dict, keep_last: int = 2) -> Path:
    """Save on every rank; rank 0 publishes it atomically once all ranks are done."""
    root = Path(root)
    final = root / f"iter_{iteration:07d}"
    tmp = root / f"iter_{iteration:07d}.tmp"
    if dist.get_rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    model_sd = model.sharded_state_dict()
    state = {"model": model_sd, "optimizer": optimizer.sharded_state_dict(model_sd, is_loading=False),
             "scheduler": scheduler.state_dict(), "rng_state": _rng_state(),
             "carebot": {**extra, "iteration": iteration, "layout": _layout(), "has_optimizer": True}}
    with _signals_held():
        dist_checkpointing.save(state, str(tmp))
    dist.barrier()
    if dist.get_rank() == 0:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        pointer = root / (LATEST + ".tmp")
        pointer.write_text(final.name)
        os.replace(pointer, root / LATEST)  # the only step that makes the checkpoint visible
        for old in sorted(root.glob("iter_*"))[:-keep_last] if keep_last > 0 else []:
            if old != final and not old.name.endswith(".tmp"):
                shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


def load_meta(ckpt_dir: Path) -> dict:
    common = torch.load(ckpt_dir / "common.pt", weights_only=False, map_location="cpu")
    return common.get("carebot", {})


def load(ckpt_dir: Path, model, optimizer=None, scheduler=None) -> dict:
    """Load weights (always) and optimizer / scheduler / RNG (when given and present) from `ckpt_dir`.
    Returns the checkpoint's `carebot` metadata (iteration, consumed_samples, ...)."""
    if not (ckpt_dir / "metadata.json").exists():
        raise CheckpointError(f"not a complete megatron checkpoint: {ckpt_dir} (no metadata.json)")
    meta = load_meta(ckpt_dir)
    model_sd = model.sharded_state_dict()
    request = {"model": model_sd}
    if optimizer is not None and meta.get("has_optimizer"):
        request["optimizer"] = optimizer.sharded_state_dict(model_sd, is_loading=True)
    same_layout = meta.get("layout") == _layout()
    if optimizer is not None and same_layout:
        request["rng_state"] = _rng_state()
    try:
        state = dist_checkpointing.load(request, str(ckpt_dir))
    except Exception as e:  # truncated files, wrong shapes: say which checkpoint
        raise CheckpointError(f"cannot load checkpoint {ckpt_dir}: {type(e).__name__}: {e}") from e
    model.load_state_dict(state["model"])
    if "optimizer" in request:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and "scheduler" in state:
        scheduler.load_state_dict(state["scheduler"])
    if "rng_state" in request:
        rng = state["rng_state"]
        torch.set_rng_state(rng["cpu"])
        if rng.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
        get_cuda_rng_tracker().set_states(rng["tracker"])
    return meta
