"""Typed run configuration: nested keyword-only dataclasses, loaded from YAML recipes, overridable
from the CLI with dotted keys (`train.train_steps=50`). A recipe may name a `base:` recipe and state only
what differs. Defaults are the paper's LLaMA-3-8B Stable CPT settings (CareBot, Sec. 3.1 / App. C)."""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

RECIPES = Path(__file__).parent / "recipes"


class ConfigError(ValueError):
    """A configuration the stack cannot run; the message says what to change."""


@dataclass(kw_only=True)
class ModelConfig:
    """LLaMA-3 architecture (8B defaults): RMSNorm, SwiGLU, RoPE theta 500000, GQA, untied embeddings."""
    num_layers: int = 32
    hidden_size: int = 4096
    ffn_hidden_size: int = 14336
    num_attention_heads: int = 32
    num_query_groups: int = 8
    vocab_size: int | None = None  # None: taken from the tokenizer
    make_vocab_size_divisible_by: int = 128  # padded further by TP so the embedding splits evenly
    rotary_base: float = 500000.0
    norm_epsilon: float = 1e-5
    init_method_std: float = 0.02
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    untie_embeddings: bool = True


@dataclass(kw_only=True)
class ParallelConfig:
    tensor: int = 1
    pipeline: int = 1
    sequence_parallel: bool = True  # used only with TP>1 on GPU
    distributed_optimizer: bool = False


@dataclass(kw_only=True)
class OptimConfig:
    lr: float = 8e-6
    min_lr: float = 0.0
    warmup_ratio: float = 0.1  # paper: 10% warmup, then cosine
    decay_style: str = "cosine"
    weight_decay: float = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    clip_grad: float = 1.0


@dataclass(kw_only=True)
class DataConfig:
    data_path: list = field(default_factory=list)  # megatron style: [w1, prefix1, w2, prefix2, ...]
    tokenizer: str = ""  # HF tokenizer directory
    seq_length: int = 4096
    split: str = "99,1,0"
    cache_dir: str | None = None  # megatron index cache (None: built in memory on every rank)


@dataclass(kw_only=True)
class TrainConfig:
    train_steps: int = 18000
    micro_batch_size: int = 1
    global_batch_size: int = 1024  # 1024 x 4096 = 4M tokens (paper)
    seed: int = 1234
    log_interval: int = 10
    eval_interval: int = 0  # 0: no periodic validation
    eval_iters: int = 10
    precision: str = "auto"  # auto: bf16 on GPU, fp32 on CPU
    tensorboard: bool = True
    exit_after_steps: int | None = None  # stop (with a checkpoint) after this many steps of this run
    epochs: float | None = None  # set: train_steps = ceil(epochs * samples per epoch / global batch) (SFT, DPO)
    peak_tflops: float | None = None  # per device, for MFU; None: looked up from the device name


@dataclass(kw_only=True)
class CheckpointConfig:
    save_interval: int = 1000
    load: str | None = None  # resume from here (defaults to the run's own checkpoint dir)
    init_from: str | None = None  # weights to start from with a NEW schedule (Boost CPT, SFT, DPO)
    init_optimizer: bool = False  # with init_from: carry the optimizer moments over too
    keep_last: int = 2
    keep_best: bool = False  # also keep the checkpoint with the lowest val_loss under OUT/best (SFT)


@dataclass(kw_only=True)
class RunConfig:
    name: str = "run"
    stage: str = "cpt"  # cpt | sft | dpo
    output_dir: str = "runs/run"
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    stage_args: dict = field(default_factory=dict)  # stage-specific knobs (SFT / DPO)


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return from_dict(tp, value, prefix=key + ".")
    if value is None:
        return None
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and args:
        tp = args[0]
    if tp is bool and isinstance(value, str):
        if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ConfigError(f"{key}: expected a boolean, got {value!r}")
        return value.lower() in ("true", "1", "yes")
    if tp in (int, float) and not isinstance(value, bool):
        try:
            return tp(value) if tp is float or float(value) == int(float(value)) else _bad(key, value, tp)
        except (TypeError, ValueError):
            _bad(key, value, tp)
    if tp is str:
        return str(value)
    return value


def _bad(key, value, tp):
    raise ConfigError(f"{key}: expected {tp.__name__}, got {value!r}")


def from_dict(cls, d: dict, prefix: str = ""):
    """Build dataclass `cls` from a (nested) dict; unknown keys are an error naming the key."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ConfigError(f"unknown config key(s): {', '.join(prefix + k for k in sorted(unknown))}; "
                          f"valid under '{prefix or '<root>'}': {', '.join(sorted(names))}")
    return cls(**{k: _coerce(hints[k], v, prefix + k) for k, v in d.items()})


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _load_yaml(path: Path) -> dict:
    if not path.exists() and (RECIPES / path.name).exists():
        path = RECIPES / path.name
    if not path.exists():
        raise ConfigError(f"recipe not found: {path} (built-in recipes: "
                          f"{', '.join(sorted(p.name for p in RECIPES.glob('*.yaml')))})")
    raw = yaml.safe_load(path.read_text()) or {}
    base = raw.pop("base", None)
    if not base:
        return raw
    parent = _load_yaml(path.parent / base)
    if raw.get("stage", parent.get("stage")) != parent.get("stage"):
        parent.pop("stage_args", None)  # stage_args belong to their stage: DPO does not inherit SFT's
    return _merge(parent, raw)


def parse_overrides(items: list[str]) -> dict:
    """`a.b=1` strings -> nested dict (values parsed as YAML scalars/lists)."""
    out: dict = {}
    for it in items:
        if "=" not in it:
            raise ConfigError(f"override '{it}' must look like key.sub=value")
        key, val = it.split("=", 1)
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(val)
    return out


def load_config(recipe: str | Path | list | None, overrides: list[str] | None = None) -> RunConfig:
    """Recipe YAML(s) (each with its `base:` chain, merged left to right, e.g. a recipe then the data
    fragment `carebot data blend` wrote) + dotted overrides -> RunConfig."""
    items = [recipe] if isinstance(recipe, (str, Path)) else list(recipe or [])
    # `--config a.yaml b.yaml key=value ...`: argparse's nargs="+" also swallows the overrides; sort them out
    overrides = [str(x) for x in items if "=" in str(x)] + list(overrides or [])
    d: dict = {}
    for r in (x for x in items if "=" not in str(x)):
        d = _merge(d, _load_yaml(Path(r)))
    d = _merge(d, parse_overrides(overrides))
    return from_dict(RunConfig, d)


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def dump(cfg, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True))
