"""Checkpoints with megatron-core `dist_checkpointing`: resharding on load (save at TP=1, load at TP=2),
atomic (saved under `iter_N.tmp`, renamed, and only then the `latest` pointer moves), complete (model,
optimizer, LR scheduler, data position, RNG states)."""
from __future__ import annotations

import contextlib
import importlib
import io
import os
import pickle
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
from torch.distributed.checkpoint.api import CheckpointException

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


def _writer_queue_dies_with_us() -> None:
    """megatron-core's file writer collects results through a multiprocessing Manager it spawns on first use
    (a server process that no hook reaches); start that Manager ourselves with `die_with_parent`, so a kill -9
    of the trainer does not leave it (and its resource tracker) running under PID 1."""
    import multiprocessing as mp
    from multiprocessing.managers import SyncManager

    from megatron.core.dist_checkpointing.strategies import filesystem_async as fa

    from carebot.procs import die_with_parent

    if getattr(fa, "_results_queue", False) is None:  # the private global it caches the queue in
        manager = SyncManager(ctx=mp.get_context("spawn"))
        manager.start(initializer=die_with_parent)
        fa._results_queue = manager.Queue()
        fa._carebot_manager = manager  # keep it referenced for the life of the process


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
    with _signals_held():  # the Manager started here inherits the held signals: a job-step signal spares it
        _writer_queue_dies_with_us()
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


# ------------------------------------------------------------------- nothing in a checkpoint may run code
# torch.distributed.checkpoint unpickles `.metadata` with no restriction, and byte items (ShardedObjects such as
# the RNG state) with an unrestricted torch.load: a crafted checkpoint directory would run its payload on load. `.metadata` is read first by a restricted unpickler that admits only DCP's own metadata classes, torch
# sizes / dtypes / layouts; byte items are loaded with weights_only=True while a load is in progress.
# exactly the classes a torch_dist `.metadata` holds (plus torch sizes and dtypes): nothing else is constructed
_DCP_ALLOWED = {
    ("torch.distributed.checkpoint.metadata", n) for n in (
        "Metadata", "MetadataIndex", "StorageMeta", "TensorProperties", "TensorStorageMetadata",
        "BytesStorageMetadata", "ChunkStorageMetadata", "_MEM_FORMAT_ENCODING")} | {
    ("torch.distributed.checkpoint.planner", n) for n in ("SavePlan", "WriteItem", "WriteItemType", "TensorWriteData")
} | {("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch", "Size"),
     ("torch.serialization", "_get_layout"), ("collections", "OrderedDict")}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _DCP_ALLOWED:
            return getattr(importlib.import_module(module), name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")


def read_dist_metadata(ckpt_dir: Path):
    """The torch_dist `.metadata` of a checkpoint, read without running anything it might carry."""
    path = Path(ckpt_dir) / ".metadata"
    try:
        with open(path, "rb") as f:
            return _MetadataUnpickler(f).load()
    except FileNotFoundError:
        raise CheckpointError(f"not a complete megatron checkpoint: {ckpt_dir} (no .metadata)") from None
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{path}: not a plain checkpoint file, refusing to unpickle it "
                              f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None


@contextlib.contextmanager
def _byte_items_weights_only():
    from torch.distributed.checkpoint import default_planner as dp

    original = dp.DefaultLoadPlanner.load_bytes

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        try:
            obj = torch.load(value, weights_only=True, map_location="cpu")
        except pickle.UnpicklingError as e:
            raise CheckpointError(f"checkpoint item {read_item.dest_index.fqn}: refusing to unpickle it "
                                  f"({str(e).splitlines()[0]})") from None
        if self.flatten_state_dict:
            dp.set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
        else:
            self.state_dict[read_item.dest_index.fqn] = obj

    dp.DefaultLoadPlanner.load_bytes = load_bytes
    try:
        yield
    finally:
        dp.DefaultLoadPlanner.load_bytes = original


def load_meta(ckpt_dir: Path) -> dict:
    """The checkpoint's `carebot` metadata. Tensors and plain containers only (`weights_only=True`, as megatron's
    own loader reads the same file): a crafted `common.pt` cannot run code; it is a CheckpointError."""
    try:
        common = torch.load(ckpt_dir / "common.pt", weights_only=True, map_location="cpu")
    except FileNotFoundError:
        raise CheckpointError(f"not a complete megatron checkpoint: {ckpt_dir} (no common.pt)") from None
    except Exception as e:  # noqa: BLE001  (UnpicklingError for anything beyond tensors / containers)
        raise CheckpointError(f"{ckpt_dir / 'common.pt'}: not a plain checkpoint file, refusing to unpickle it "
                              f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(common, dict):
        raise CheckpointError(f"{ckpt_dir / 'common.pt'}: expected a dict, got {type(common).__name__}")
    return common.get("carebot", {})


def _first_failure(e: BaseException) -> str:
    """One line for a load failure: a CheckpointException wraps each rank's exception (megatron's shape
    message names the tensor and both shapes); show the first, not the per-rank tracebacks."""
    failures = getattr(e, "failures", None)
    if failures:
        e = next(iter(failures.values()))
        e = e[0] if isinstance(e, tuple) else e
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


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
    read_dist_metadata(ckpt_dir)  # refuses a crafted .metadata before megatron unpickles it
    try:
        with _byte_items_weights_only():
            state, missing, unexpected = dist_checkpointing.load(request, str(ckpt_dir), strict="return_all")
    except CheckpointError:
        raise
    except (Exception, CheckpointException) as e:  # torch's CheckpointException is a BaseException
        raise CheckpointError(f"cannot load checkpoint {ckpt_dir}: {_first_failure(e)}") from e
    # megatron's words: `missing` = in the checkpoint, not asked for; `unexpected` = asked for, not in it
    extra = sorted(k for k in missing if not k.startswith(("optimizer.", "rng_state")))
    if extra or unexpected:  # a model that is not the checkpoint's: never load it partly
        what = "; ".join(([f"has no {', '.join(sorted(unexpected)[:3])}"] if unexpected else []) +
                         ([f"has {', '.join(extra[:3])} that this model lacks"] if extra else []))
        raise CheckpointError(f"cannot load checkpoint {ckpt_dir}: it {what} (tied vs untied embeddings, or "
                              "another architecture?)")
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


def check_resume(src: Path, cfg) -> tuple[list[dict], bool, list[str]]:
    """Refuse to resume `src` under a config that changes what the next sample is or how the schedule counts
    (carebot.run_config.RESUME_KEYS): one ConfigError line naming each key with its old and new value, unless
    `checkpoint.override_resume` names the key. Returns (the overrides recorded so far, this one's appended;
    whether a schedule key changed; lines to log)."""
    from carebot.errors import ConfigError
    from carebot.run_config import SCHEDULE_KEYS, resume_keys

    meta = load_meta(src)
    history = list(meta.get("resume_overrides", []))
    old, new = meta.get("resume_keys"), resume_keys(cfg)
    if not isinstance(old, dict):
        return history, False, [f"{src}: made before resume checks (no resume_keys): not compared"]
    changed = {k: (old.get(k), v) for k, v in new.items() if k in old and old[k] != v}
    refused = {k: ov for k, ov in changed.items() if k not in cfg.checkpoint.override_resume}
    if refused:
        what = "; ".join(f"{k}: {o!r} -> {n!r}" for k, (o, n) in refused.items())
        raise ConfigError(f"resume from {src}: {what} would change the run this checkpoint belongs to (what the "
                          f"next sample is, how the schedule counts); use a new output_dir, or set "
                          f"checkpoint.override_resume=[{','.join(refused)}] to change it on purpose")
    notes = []
    for k, (o, n) in changed.items():
        notes.append(f"resume override (checkpoint.override_resume): {k}: {o!r} -> {n!r} from step {meta.get('iteration')}")
        history.append({"step": meta.get("iteration"), "key": k, "old": o, "new": n})
    return history, any(k in SCHEDULE_KEYS for k in changed), notes
