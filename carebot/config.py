"""The one config system: nested keyword-only dataclasses built from YAML files (each may name a `base:` file
and state only what differs; several merge left to right) and dotted command-line overrides
(`train.train_steps=50`). Unknown keys and wrong types are a `ConfigError` naming the key."""
from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import typing
from pathlib import Path
from typing import Any, Callable

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
    """A YAML config with its `base:` chain resolved (a bare file name also finds the built-in recipes).
    `base:` names one file or a list of files, merged left to right before this one (e.g. a paper recipe,
    then the tiny CPU model shape)."""
    path = Path(path)
    if not path.exists() and (RECIPES / path.name).exists():
        path = RECIPES / path.name
    if not path.exists():
        raise ConfigError(f"recipe not found: {path} (built-in recipes: "
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
    parent: dict = {}
    for b in [base] if isinstance(base, str) else list(base):
        parent = _merge(parent, load_yaml(path.parent / b))
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
    return from_dict(cls, merged(recipe, overrides))


def merged(recipe: str | Path | list | None, overrides: list[str] | None = None) -> dict:
    """The nested dict `load` builds a config from: the YAML chain(s), then the overrides."""
    items = [recipe] if isinstance(recipe, (str, Path)) else list(recipe or [])
    # `--config a.yaml b.yaml key=value ...`: argparse's nargs="+" also swallows the overrides; sort them out
    overrides = [str(x) for x in items if "=" in str(x)] + list(overrides or [])
    d: dict = {}
    for r in (x for x in items if "=" not in str(x)):
        d = _merge(d, load_yaml(r))
    return _merge(d, parse_overrides(overrides))


def stated_keys(d: dict, prefix: str = "") -> set[str]:
    """The dotted keys a nested config dict states (`model.num_layers`, ...): what a user set, not a default."""
    out = set()
    for k, v in d.items():
        if k == "base":
            continue
        key = f"{prefix}{k}"
        out |= stated_keys(v, key + ".") if isinstance(v, dict) else {key}
    return out


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def dump(cfg, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True))


# ----------------------------------------------------------------------------- every command's --config
# `carebot data <tool> | eval <task> --config FILE.yaml [FILE2.yaml] [--flags] [key=value ...]`: the keys are the
# command's option names (dashes or underscores); precedence parser defaults < YAML (each with its `base:`
# chain) < explicit flags < key=value overrides. The resolved options are printed and saved as YAML beside the
# command's outputs, so `--config <that file>` reruns the same command.
_OVERRIDE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+)*=")
_NEGATIVE = re.compile(r"^-\d+$|^-\d*\.\d+(?:e-?\d+)?$")
_BOOL = {"true": True, "yes": True, "1": True, "on": True, "false": False, "no": False, "0": False, "off": False}
CONFIG_HELP = ("YAML of this command's options (dashes or underscores; may name a `base:` file); explicit flags "
               "win over it, trailing key=value overrides win over both")


def _norm(key: str) -> str:
    return key.lstrip("-").replace("-", "_")


def _subparsers(p: argparse.ArgumentParser):
    return next((a for a in p._actions if isinstance(a, argparse._SubParsersAction)), None)


def _keys(p: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Config key -> action: each option's dest and long names, each positional's dest."""
    out: dict[str, argparse.Action] = {}
    for a in p._actions:
        if isinstance(a, (argparse._HelpAction, argparse._VersionAction)) or a.dest in (argparse.SUPPRESS, "config"):
            continue
        out.setdefault(_norm(a.dest), a)
        for s in a.option_strings:  # not the --no-x half of a --x/--no-x flag: `no_x: true` would read as x
            if s.startswith("--") and not (isinstance(a, argparse.BooleanOptionalAction) and s.startswith("--no-")):
                out.setdefault(_norm(s), a)
    return out


def _option(p: argparse.ArgumentParser, opt: str) -> argparse.Action | None:
    acts = p._option_string_actions
    if opt in acts:
        return acts[opt]
    hits = {acts[s] for s in acts if s.startswith(opt)} if p.allow_abbrev and opt.startswith("--") else set()
    return hits.pop() if len(hits) == 1 else None


def _split(parser: argparse.ArgumentParser, argv: list[str], sub: str | None = None):
    """argv -> (argparse tokens, --config files, key=value overrides, subcommand, option actions given).
    A token that an option takes as its value stays that option's (`--bench medqa=PATH`); after a list option
    (nargs +/*), a key=value token is an override, as after the trainer's `--config a.yaml b.yaml`."""
    sp = _subparsers(parser)
    cur = sp.choices[sub] if sub else parser
    cli, files, over, seen = [], [], [], []
    need, many = 0, False
    i = 0
    while i < len(argv):
        t = argv[i]
        i += 1
        if need:
            cli.append(t)
            need -= 1
        elif t == "--":
            cli += argv[i - 1:]
            break
        elif t == "--config" or t.startswith("--config="):
            vals = [t.split("=", 1)[1]] if "=" in t else []
            while "=" not in t and i < len(argv) and not argv[i].startswith("-"):
                vals.append(argv[i])
                i += 1
            if not vals:
                raise ConfigError("--config needs a YAML file")
            files += [v for v in vals if not _OVERRIDE.match(v)]
            over += [v for v in vals if _OVERRIDE.match(v)]
            many = False
        elif t.startswith("-") and len(t) > 1 and not _NEGATIVE.match(t):
            opt, eq, _ = t.partition("=")
            a = _option(cur, opt)
            cli.append(t)
            many = False
            if a is not None:
                seen.append(a)
                if not eq and a.nargs is None:
                    need = 1
                elif not eq and isinstance(a.nargs, int):
                    need = a.nargs
                elif not eq and a.nargs in ("+", "*", "?"):
                    many = True
        elif _OVERRIDE.match(t):
            over.append(t)
        else:
            if not many and sp is not None and cur is parser and t in sp.choices:
                cur, sub = sp.choices[t], t
            cli.append(t)
    return cli, files, over, sub, seen


def _resolve(d: dict, keys: dict[str, argparse.Action], where: str) -> dict[str, tuple[argparse.Action, Any, str]]:
    """Nested config dict -> {dest: (action, value, key)}; `a: {b: 1}` / `a.b=1` is option a_b (`judge.model`)."""
    out: dict[str, tuple[argparse.Action, Any, str]] = {}

    def walk(node: dict, path: list[str]) -> None:
        for k, v in node.items():
            p = path + [str(k)]
            a = keys.get(_norm("_".join(p)))
            if a is not None:
                out[a.dest] = (a, v, ".".join(p))
            elif isinstance(v, dict) and v:
                walk(v, p)
            else:
                valid = list(dict.fromkeys(_norm(a.dest) for a in keys.values()))
                raise ConfigError(f"unknown config key '{'.'.join(p)}' {where}; valid keys: {', '.join(valid)}")

    walk(d, [])
    return out


def _scalar(a: argparse.Action, x: Any, key: str) -> Any:
    t = a.type
    try:
        if isinstance(x, (dict, list)) and t in (None, str, int, float):
            raise ValueError(f"expected a single value, got {type(x).__name__}")
        if t in (None, str):
            x = str(x)
        elif t in (int, float):
            if isinstance(x, bool) or (t is int and isinstance(x, float) and not x.is_integer()):
                raise ValueError(f"expected {t.__name__}")
            x = t(x)
        elif isinstance(x, str):
            x = t(x)  # a YAML mapping for a NAME=VALUE option (e.g. a ratio) is taken as it is
    except (TypeError, ValueError, argparse.ArgumentTypeError) as e:
        raise ConfigError(f"{key}: {x!r} is not a valid value ({one_line(e)})") from None
    if a.choices is not None and x not in a.choices:
        raise ConfigError(f"{key}: {x!r} is not one of {', '.join(map(str, a.choices))}")
    return x


def _convert(a: argparse.Action, v: Any, key: str) -> Any:
    """A YAML / override value as argparse would have produced it from the flag."""
    if v is None:
        return None
    if a.nargs == 0:  # store_true / store_false / --x/--no-x
        v = _BOOL.get(v.lower(), v) if isinstance(v, str) else v
        if not isinstance(v, bool):
            raise ConfigError(f"{key}: expected true or false, got {v!r}")
        return v if isinstance(a, (argparse._StoreTrueAction, argparse._StoreFalseAction,
                                   argparse.BooleanOptionalAction)) else (a.const if v else a.default)
    if a.nargs in ("+", "*") or (isinstance(a.nargs, int) and a.nargs > 1) or isinstance(a, argparse._AppendAction):
        if isinstance(v, dict):  # {medqa: PATH} for a repeated NAME=PATH option
            v = [f"{k}={x}" for k, x in v.items()]
        return [_scalar(a, x, key) for x in (v if isinstance(v, (list, tuple)) else [v])]
    if isinstance(v, (list, tuple)) and a.type in (None, str):  # a list for a comma-separated option
        v = ",".join(map(str, v))
    return _scalar(a, v, key)


def _plain(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v if v is None or isinstance(v, (bool, int, float, str)) else str(v)


def parse_command(parser: argparse.ArgumentParser, argv: list[str] | None = None, *,
                  save: str | Callable[[argparse.Namespace], str | Path | None] | None = "out",
                  name: str | None = None) -> argparse.Namespace:
    """`parser.parse_args(argv)` plus `--config FILE.yaml ...` and `key=value` overrides (see above).

    Required options and positionals may come from the YAML / overrides; an unknown key or a bad value is a
    ConfigError naming the key. The resolved options are printed to stderr and saved (atomically) to
    `<getattr(ns, save)>/<name>.config.yaml` (`save` names the output-directory option), or to `save(ns)` when
    `save` is a function, or not at all when it is None. `name` defaults to the last word of `parser.prog`."""
    from carebot.io import write_text

    argv = list(sys.argv[1:] if argv is None else argv)
    sp = _subparsers(parser)
    for p in [parser, *(sp.choices.values() if sp else [])]:
        if "--config" not in p._option_string_actions:
            p.add_argument("--config", nargs="+", metavar="FILE.yaml", help=CONFIG_HELP)
    cli, files, over, sub, seen = _split(parser, argv)
    ydict: dict = {}
    for f in files:
        if not Path(f).is_file():
            raise ConfigError(f"config not found: {f}")
        ydict = _merge(ydict, load_yaml(f))
    odict = parse_overrides(over)
    if sp is not None and sub is None:  # the subcommand itself from the config (`cmd: train`)
        chosen = next((d[k] for d in (odict, ydict) for k in (sp.dest, sp.dest.replace("_", "-")) if k in d), None)
        if chosen is not None:
            if chosen not in sp.choices:
                raise ConfigError(f"{sp.dest}: {chosen!r} is not one of {', '.join(sp.choices)}")
            cli, files, over, sub, seen = _split(parser, argv, str(chosen))
            cli = [str(chosen)] + cli
    parsers = [parser] + ([sp.choices[sub]] if sub else [])
    keys = {k: a for p in parsers for k, a in _keys(p).items()}
    where = f"in {', '.join(files)}" if files else ""
    yvals = {d: _convert(a, v, k) for d, (a, v, k) in _resolve(ydict, keys, where).items()}
    ovals = {d: _convert(a, v, k) for d, (a, v, k) in _resolve(odict, keys, "in the key=value overrides").items()}
    acts = {a.dest: a for p in parsers for a in _keys(p).values()}
    lifted = []
    for dest in {**yvals, **ovals}:
        a = acts[dest]
        if isinstance(a, argparse._SubParsersAction):
            continue
        if a.required:  # given by the config: no longer required on the command line
            a.required = False
            lifted.append(a)
        if not a.option_strings:
            a.nargs = "?" if a.nargs is None else "*" if a.nargs == "+" else a.nargs
        if dest in yvals:
            a.default = yvals[dest]
    ns = parser.parse_args(cli)
    for dest, v in yvals.items():  # an append option given on the command line replaces the YAML's list
        if isinstance(acts[dest], argparse._AppendAction) and acts[dest] in seen and isinstance(v, list):
            setattr(ns, dest, getattr(ns, dest)[len(v):])
    for dest, v in ovals.items():
        if not isinstance(acts[dest], argparse._SubParsersAction):
            setattr(ns, dest, v)
    for a in lifted:
        if getattr(ns, a.dest, None) in (None, []):
            opt = next((s for s in a.option_strings if s.startswith("--")), a.dest)
            raise ConfigError(f"{opt} is required (on the command line, or as '{_norm(a.dest)}' in --config)")
    ns.config = files or None
    resolved = {a.dest: _plain(getattr(ns, a.dest, None)) for a in acts.values()
                if not (a.help == argparse.SUPPRESS and a not in seen and a.dest not in yvals and a.dest not in ovals)}
    prog = parser.prog
    target = save(ns) if callable(save) else (Path(getattr(ns, save)) / f"{name or prog.split()[-1]}.config.yaml"
                                              if save and getattr(ns, save, None) else None)
    body = yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True, default_flow_style=None, width=120)
    print(f"[{prog}] config{f' -> {target}' if target else ''}:\n" + "".join(f"  {line}\n" for line in body.splitlines()),
          end="", file=sys.stderr, flush=True)
    if target:
        write_text(target, f"# {prog}: resolved options; rerun with `{prog} --config {target}`\n{body}")
    return ns
