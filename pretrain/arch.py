"""A model's architecture comes from its checkpoint.

The run starts from a checkpoint (its own, to resume; `checkpoint.load`; or `checkpoint.init_from`, which may
also be a plain HF model directory, converted once here). Its stored ModelConfig fills every architecture key
of the run config; a key the recipe or the command line STATES (not a default) that disagrees is an error
naming both values, so a pasted `model.rotary_base=500000` can never train a rope-theta-1e5 model silently.
Training knobs of the model section (dropout, init std, vocab padding) stay the recipe's."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

from carebot.errors import ConfigError
from carebot.run_config import ModelConfig, RunConfig

# what a checkpoint fixes; the rest of ModelConfig is how the run trains it
ARCH_KEYS = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups",
             "rotary_base", "rope_scaling_factor", "norm_epsilon", "untie_embeddings", "qkv_bias")
_ENV_OF_A_RUN = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK",
                 "ROLE_RANK", "TORCHELASTIC_RUN_ID", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")


def is_hf_dir(path: str | Path) -> bool:
    p = Path(path)
    return (p / "config.json").is_file() and not (p / "metadata.json").exists() and not (p / "latest").exists()


def converted(hf_dir: Path, out_root: Path) -> Path:
    """`hf_dir` as a megatron checkpoint under `out_root/init_from_hf/` (converted once per source: the
    conversion records the source's config and weights' sizes + mtimes). Rank 0 converts in a child process
    (one process, no process group of this run); the other ranks wait for it."""
    from carebot.commit import Done

    dst = out_root / "init_from_hf"
    weights = sorted(f for f in hf_dir.iterdir() if f.suffix in (".safetensors", ".bin", ".json"))
    done = Done(dst / ".done" / "convert.json", weights, {"source": str(hf_dir.resolve())})
    rank = int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))
    if done.result() is not None:
        return dst
    if rank != 0:
        end = time.time() + 3600
        while done.result() is None:
            if time.time() > end:
                raise ConfigError(f"rank {rank}: no converted checkpoint of {hf_dir} after an hour (rank 0 converts it)")
            time.sleep(2)
        return dst
    print(f"[carebot] checkpoint.init_from {hf_dir} is an HF model directory: converting it to {dst} once", flush=True)
    env = {k: v for k, v in os.environ.items() if k not in _ENV_OF_A_RUN}
    p = subprocess.run([sys.executable, "-m", "pretrain.convert_cli", "hf-to-megatron", "--hf", str(hf_dir), "--out",
                        str(dst)], env=env, capture_output=True, text=True)
    if p.returncode != 0:
        why = next((l for l in reversed(p.stderr.splitlines()) if "error" in l.lower()), p.stderr.strip()[-300:])
        raise ConfigError(f"converting checkpoint.init_from {hf_dir}: {why}")
    done.write(json.loads((dst / "convert.json").read_text()))
    return dst


def start_checkpoint(cfg: RunConfig, own_root: Path) -> Path | None:
    """The iteration dir this run starts from (resume before init_from), converting an HF init_from first
    (and pointing `cfg.checkpoint.init_from` at the result)."""
    from pretrain import checkpoint as ckpt

    c = cfg.checkpoint
    src = ckpt.resolve(c.load or own_root)
    if src is None and c.init_from:
        if is_hf_dir(c.init_from):
            c.init_from = str(converted(Path(c.init_from), Path(cfg.output_dir)))
        src = ckpt.resolve(c.init_from)
    return src


def from_checkpoint(cfg: RunConfig, own_root: Path) -> RunConfig:
    """`cfg` with the architecture of the checkpoint it starts from (unchanged when it starts from scratch)."""
    from pretrain import checkpoint as ckpt

    src = start_checkpoint(cfg, own_root)
    if src is None:
        return cfg
    stored = ckpt.load_meta(src).get("model")
    if not stored:
        return cfg  # an old checkpoint without its architecture: the recipe's shape is checked on load
    out = replace(cfg, model=with_arch(cfg, stored, src))
    out.stated = getattr(cfg, "stated", frozenset())
    return out


def with_arch(cfg: RunConfig, stored: dict, src) -> ModelConfig:
    """cfg.model with the architecture keys of `stored` (a checkpoint's ModelConfig); a key `cfg` STATES that
    disagrees is a ConfigError naming both values."""
    stated = getattr(cfg, "stated", frozenset())
    have = asdict(cfg.model)
    for k in ARCH_KEYS:
        if f"model.{k}" in stated and k in stored and _differ(have[k], stored[k]):
            raise ConfigError(f"model.{k}={have[k]!r} disagrees with the checkpoint it starts from ({src}: "
                              f"{k}={stored[k]!r}); drop the override, the architecture comes from the checkpoint")
    arch = {k: stored[k] for k in ARCH_KEYS if k in stored}
    changed = {k: v for k, v in arch.items() if _differ(have[k], v)}
    if changed:
        print(f"[carebot] architecture from {src}: " + ", ".join(f"{k}={v}" for k, v in changed.items()), flush=True)
    return replace(cfg.model, **arch)


def _differ(a, b) -> bool:
    if a is None or b is None:
        return a is not b
    if isinstance(a, float) or isinstance(b, float):
        return abs(float(a) - float(b)) > 1e-6 * max(abs(float(a)), abs(float(b)), 1e-30)
    return a != b
