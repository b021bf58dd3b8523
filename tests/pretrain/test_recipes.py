"""The recipes say each setting once: every key a recipe states differs from what its `base:` chain (or, for
a root recipe, the RunConfig defaults) already gives, and the tiny CPU model shape lives in one file."""
from __future__ import annotations

import dataclasses

import pytest
import yaml

from carebot.config import RECIPES, _merge, load_yaml
from carebot.run_config import RunConfig

RECIPE_FILES = sorted(p.name for p in RECIPES.glob("*.yaml"))


def leaves(d: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(leaves(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def inherited(raw: dict) -> dict:
    """What a recipe would resolve to without its own keys: the dataclass defaults, then its bases."""
    d = dataclasses.asdict(RunConfig())
    base = raw.get("base")
    for b in [base] if isinstance(base, str) else list(base or []):
        d = _merge(d, load_yaml(RECIPES / b))
    if raw.get("stage", d["stage"]) != d["stage"]:
        d["stage_args"] = {}  # stage_args belong to their stage (as in carebot.config.load_yaml)
    return d


def restated(raw: dict) -> list[str]:
    own = leaves({k: v for k, v in raw.items() if k != "base"})
    have = leaves(inherited(raw))
    return [f"{k}: {v!r}" for k, v in own.items() if k in have and have[k] == v and k != "name"]


@pytest.mark.parametrize("name", RECIPE_FILES)
def test_recipe_states_only_what_differs(name):
    raw = yaml.safe_load((RECIPES / name).read_text())
    if "name" not in raw:  # a fragment (tiny_model.yaml) laid over paper recipes: each key must change one
        users = [yaml.safe_load((RECIPES / n).read_text()) for n in RECIPE_FILES]
        users = [u for u in users if name in ([u.get("base")] if isinstance(u.get("base"), str) else u.get("base") or [])]
        assert users, f"{name}: a fragment no recipe uses"
        unused = [k for k in leaves(raw) if all(leaves(inherited({"base": [b for b in u["base"] if b != name]}))
                                                .get(k) == leaves(raw)[k] for u in users)]
        assert not unused, f"{name} states keys that change no recipe using it: {unused}"
        return
    assert not restated(raw), f"{name} restates what its base already gives: {restated(raw)}"


def test_restated_check_catches_a_restated_default():
    assert restated({"base": "stable_cpt.yaml", "optim": {"lr": 8.0e-6, "min_lr": 1.0}}) == ["optim.lr: 8e-06"]
    assert restated({"train": {"micro_batch_size": 1}}) == ["train.micro_batch_size: 1"]


def test_tiny_model_shape_is_stated_once():
    shape_keys = {"num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups"}
    stating = [n for n in RECIPE_FILES if shape_keys & set((yaml.safe_load((RECIPES / n).read_text()) or {})
                                                           .get("model", {}) or {})]
    assert stating == ["tiny_model.yaml"], stating
