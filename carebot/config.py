"""The one config system: nested keyword-only dataclasses built from YAML files (each may name a `base:` file
and state only what differs; several merge left to right) and dotted command-line overrides
(`train.train_steps=50`). Unknown keys and wrong types are a `ConfigError` naming the key."""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

import yaml

from carebot.errors import ConfigError, one_line

# built-in recipes (looked up by bare file name); a data location, not an import of the trainer
RECIPES = Path(__file__).resolve().parents[1] / "pretrain" / "recipes"


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


def load_yaml(path: str | Path) -> dict:
    """A YAML config with its `base:` chain resolved (a bare file name also finds the built-in recipes)."""
    path = Path(path)
    if not path.exists() and (RECIPES / path.name).exists():
        path = RECIPES / path.name
    if not path.exists():
        raise ConfigError(f"config not found: {path} (built-in recipes: "
                          f"{', '.join(sorted(p.name for p in RECIPES.glob('*.yaml')))})")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid YAML ({one_line(e)})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of keys, got {type(raw).__name__}")
    base = raw.pop("base", None)
    if not base:
        return raw
    parent = load_yaml(path.parent / base)
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


def load(cls, recipe: str | Path | list | None, overrides: list[str] | None = None):
    """Recipe YAML(s) (each with its `base:` chain, merged left to right, e.g. a recipe then the data
    fragment `carebot data blend` wrote) + dotted overrides -> an instance of dataclass `cls`."""
    items = [recipe] if isinstance(recipe, (str, Path)) else list(recipe or [])
    # `--config a.yaml b.yaml key=value ...`: argparse's nargs="+" also swallows the overrides; sort them out
    overrides = [str(x) for x in items if "=" in str(x)] + list(overrides or [])
    d: dict = {}
    for r in (x for x in items if "=" not in str(x)):
        d = _merge(d, load_yaml(r))
    d = _merge(d, parse_overrides(overrides))
    return from_dict(cls, d)


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def dump(cfg, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True))
