"""`carebot data blend`: Megatron `data_path: [w1, p1, w2, p2, ...]` for the Stable / Boost CPT mixtures.

CareBot (Sec. 3.1, App. C): Stable CPT medical:general = 19:1 with zh:en = 1:9; Boost CPT high-quality
medical : medical SFT = 1:1 with zh:en = 4:6. Both ratios are token ratios here (what Megatron blend weights
mean: GPT samples are fixed-length windows, so sample shares are token shares). Two ratios over four buckets
leave one degree of freedom; by default the ratios are independent and a bucket's share is their product
(medical-zh 0.95 x 0.1 = 0.095, as in App. C). `lang_ratio` may instead give each domain its own zh:en.
Several shards of one bucket split the bucket's share by their token counts."""
from __future__ import annotations

import argparse
import glob
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from carebot.config import parse_command
from carebot.run_config import load_config
from carebot.errors import ConfigError, InputError
from carebot.io import write_json
from data_tools.tokens.manifest import MANIFEST_SUFFIX, load_manifest

DOMAINS = ("medical_hq", "medical", "general", "sft")  # medical_hq first: it also contains "medical"
LANGS = ("zh", "en")


class BlendError(InputError, ValueError):
    """A blend that cannot be realised from the given data (empty bucket, too few tokens)."""


@dataclass(kw_only=True)
class BlendSpec:
    domain_ratio: dict[str, float]
    lang_ratio: dict[str, float] | dict[str, dict[str, float]]  # one zh:en for all, or one per domain


RECIPES: dict[str, BlendSpec] = {
    "stable": BlendSpec(domain_ratio={"medical": 19, "general": 1}, lang_ratio={"zh": 1, "en": 9}),
    "boost": BlendSpec(domain_ratio={"medical_hq": 1, "sft": 1}, lang_ratio={"zh": 4, "en": 6}),
}


@dataclass
class Bucket:
    domain: str
    lang: str
    share: float = 0.0
    prefixes: list[tuple[str, int]] = field(default_factory=list)  # (prefix, tokens)

    @property
    def name(self) -> str:
        return f"{self.domain}_{self.lang}"

    @property
    def tokens(self) -> int:
        return sum(t for _, t in self.prefixes)


def bucket_of(m: dict) -> tuple[str, str]:
    """(domain, lang) of a manifest: its `bucket` field, else the prefix name, else its majority script."""
    name = (m.get("bucket") or Path(m["prefix"]).name).lower()
    domain = next((d for d in DOMAINS if d in name), None)
    if domain is None:
        raise BlendError(f"{m['prefix']}: cannot tell the bucket; tokenize with --bucket {{{','.join(DOMAINS)}}}_{{zh,en}}")
    lang = next((lg for lg in LANGS if f"_{lg}" in name or name.startswith(f"{lg}_")), None)
    if lang is None:
        lang = max(LANGS, key=lambda lg: m.get("lang", {}).get(lg, {}).get("tokens", 0))
    return domain, lang


def _norm(r: dict[str, float]) -> dict[str, float]:
    total = float(sum(r.values()))
    if total <= 0 or any(v < 0 for v in r.values()):
        raise BlendError(f"bad ratio {r}: weights must be >= 0 and not all 0")
    return {k: v / total for k, v in r.items()}


def target_shares(spec: BlendSpec) -> dict[tuple[str, str], float]:
    """Token share per (domain, lang): product rule, or per-domain zh:en when lang_ratio is nested."""
    dom = _norm(spec.domain_ratio)
    nested = all(isinstance(v, dict) for v in spec.lang_ratio.values())
    out = {}
    for d, pd in dom.items():
        lr = _norm(spec.lang_ratio[d] if nested else spec.lang_ratio)
        for lg, pl in lr.items():
            out[(d, lg)] = pd * pl
    return out


def _as_manifest(x) -> dict:
    return x if isinstance(x, dict) else load_manifest(x)


def plan(manifests: list, kind: str = "stable", spec: BlendSpec | None = None) -> list[Bucket]:
    """Buckets with their target shares and shards; raises BlendError if a needed bucket has no tokens."""
    spec = spec or RECIPES[kind]
    buckets = {k: Bucket(*k, share=s) for k, s in target_shares(spec).items()}
    for m in map(_as_manifest, manifests):
        key = bucket_of(m)
        if key in buckets and m["tokens"] > 0:
            buckets[key].prefixes.append((m["prefix"], int(m["tokens"])))
    empty = [b.name for b in buckets.values() if b.share > 0 and b.tokens == 0]
    if empty:
        raise BlendError(f"{kind}: no tokens for bucket(s) {', '.join(empty)} "
                         f"(needed: {', '.join(f'{buckets[k].name} {buckets[k].share:.1%}' for k in buckets)})")
    return [b for b in buckets.values() if b.share > 0]


def solve_blend(manifests: list, kind: str = "stable", spec: BlendSpec | None = None) -> list:
    """Megatron `data_path` list [w1, p1, w2, p2, ...] (weights sum to 1) for the `kind` recipe.

    `manifests`: tokenize manifests as dicts, manifest paths or dataset prefixes."""
    out: list = []
    for b in plan(manifests, kind, spec):
        for prefix, tokens in sorted(b.prefixes):
            out += [round(b.share * tokens / b.tokens, 10), prefix]
    return out


def epochs_needed(buckets: list[Bucket], train_tokens: int) -> dict[str, float]:
    """Passes over each bucket that `train_tokens` at the target shares would need (> 1 means upsampling)."""
    return {b.name: b.share * train_tokens / b.tokens for b in buckets}


# ---------------------------------------------------------------------------------------------- check
class _CheckTokenizer:
    """The attributes GPTDataset reads; the check never tokenizes text."""

    def __init__(self, eod: int, vocab_size: int):
        self.eod, self.pad, self.bos, self.vocab_size = eod, -1, None, vocab_size
        self.unique_identifiers = {"class": "blend-check", "eod": eod, "vocab_size": vocab_size}


def realized_shares(data_path: list, seq_length: int = 256, num_samples: int = 20000, seed: int = 1234,
                    eod: int = 128001, vocab_size: int = 128256) -> dict[str, float]:
    """Build megatron-core's BlendedDataset for `data_path`; return the share of samples drawn from each prefix."""
    import numpy as np
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    weights, prefixes = [float(w) for w in data_path[0::2]], [str(p) for p in data_path[1::2]]
    # No index cache: the indices are built in memory, so no torch.distributed rank is needed.
    cfg = GPTDatasetConfig(random_seed=seed, sequence_length=seq_length, blend=(prefixes, weights), split="1,0,0",
                           tokenizer=_CheckTokenizer(eod, vocab_size), reset_position_ids=False,
                           reset_attention_mask=False, eod_mask_loss=False, path_to_cache=None)
    train, _, _ = BlendedMegatronDatasetBuilder(GPTDataset, [num_samples, 0, 0], lambda: True, cfg).build()
    if len(prefixes) == 1:
        return {prefixes[0]: 1.0}
    counts = np.bincount(np.asarray(train.dataset_index), minlength=len(prefixes))
    return {p: float(c) / counts.sum() for p, c in zip(prefixes, counts)}


def check_blend(manifests: list, data_path: list, **kw) -> dict:
    """Realized bucket, domain and language token shares of the megatron-core BlendedDataset for `data_path`."""
    ms = [_as_manifest(m) for m in manifests]
    where = {m["prefix"]: bucket_of(m) for m in ms}
    eod = next((m["setup"]["suffix_ids"][-1] for m in ms if m.get("setup", {}).get("suffix_ids")), 128001)
    per_prefix = realized_shares(data_path, eod=eod, **kw)
    buckets: dict[str, float] = {}
    for p, s in per_prefix.items():
        d, lg = where[p]
        buckets[f"{d}_{lg}"] = buckets.get(f"{d}_{lg}", 0.0) + s
    dom = {d: sum(v for k, v in buckets.items() if k.rsplit("_", 1)[0] == d) for d in DOMAINS}
    lang = {lg: sum(v for k, v in buckets.items() if k.endswith("_" + lg)) for lg in LANGS}
    return {"buckets": buckets, "domains": {k: v for k, v in dom.items() if v}, "langs": lang}


# ---------------------------------------------------------------------------------------------- CLI
def _ratio(s: str) -> dict[str, float]:
    """'medical=19,general=1' -> dict."""
    try:
        return {k.strip(): float(v) for k, v in (kv.split("=") for kv in s.split(","))}
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected name=weight,name=weight, got {s!r}") from None


def _find_manifests(items: list[str]) -> list[str]:
    out = []
    for it in items:
        p = Path(it)
        found = (sorted(str(q) for q in p.rglob("*" + MANIFEST_SUFFIX)) if p.is_dir()
                 else sorted(glob.glob(it)) if any(c in it for c in "*?[") else [it])
        if not found:
            raise BlendError(f"--manifests {it}: no *{MANIFEST_SUFFIX} found")
        out += found
    return out


def _yaml(kind: str, data_path: list, shares: dict[str, float]) -> str:
    head = "\n".join(f"#   {k}: {v:.4f}" for k, v in shares.items())
    rows = "\n".join(f"  - {w!r}\n  - {json.dumps(p)}" for w, p in zip(data_path[0::2], data_path[1::2]))
    return (f"# carebot data blend --kind {kind}: Megatron weight/prefix pairs (token shares per bucket)\n{head}\n"
            f"data:\n  data_path:\n{rows}\n")


def _recipe_tokens(recipe: str, steps: int | None, gbs: int | None, seq: int | None) -> tuple[int, int, int]:
    """train_steps, global_batch_size, seq_length of a trainer recipe (its `base:` chain and the run defaults
    resolved, as the trainer resolves them); a flag given on the command line wins."""
    try:
        rc = load_config(recipe)
    except ConfigError as e:
        raise ConfigError(f"--recipe {recipe}: {e}") from None
    return steps or rc.train.train_steps, gbs or rc.train.global_batch_size, seq or rc.data.seq_length


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="carebot data blend", description=__doc__.split("\n")[0])
    ap.add_argument("--kind", choices=sorted(RECIPES), required=True)
    ap.add_argument("--manifests", nargs="+", required=True, help="tokenize manifests, prefixes, dirs or globs")
    ap.add_argument("--out", required=True, help="recipe fragment to write (YAML: data.data_path)")
    ap.add_argument("--domain-ratio", type=_ratio, help="override, e.g. medical=19,general=1")
    ap.add_argument("--lang-ratio", type=_ratio, help="override zh:en for every domain, e.g. zh=1,en=9")
    ap.add_argument("--domain-lang-ratio", nargs="+", metavar="DOMAIN:zh=A,en=B",
                    help="per-domain zh:en instead of the product rule, e.g. medical:zh=1,en=9 general:zh=1,en=1")
    ap.add_argument("--train-tokens", type=float, help="tokens the run will consume (else steps x gbs x seq)")
    ap.add_argument("--recipe", help="trainer recipe YAML: train_steps x global_batch_size x seq_length")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--global-batch-size", type=int)
    ap.add_argument("--seq-length", type=int, default=None)
    ap.add_argument("--max-epochs", type=float, default=1.0, help="fail if a bucket would be repeated more")
    ap.add_argument("--check", action="store_true", help="build megatron-core's BlendedDataset, report real shares")
    ap.add_argument("--check-samples", type=int, default=20000)
    a = parse_command(ap, argv, save=lambda a: Path(a.out).with_name(Path(a.out).stem + ".blend.config.yaml"))

    if a.recipe:  # the step count the epochs check is about, from the trainer's recipe (its `base:` chain too)
        a.steps, a.global_batch_size, a.seq_length = _recipe_tokens(a.recipe, a.steps, a.global_batch_size, a.seq_length)
    base = RECIPES[a.kind]
    lang_ratio = a.lang_ratio or base.lang_ratio
    if a.domain_lang_ratio:
        lang_ratio = {d: _ratio(r) for d, r in (x.split(":", 1) for x in a.domain_lang_ratio)}
    spec = BlendSpec(domain_ratio=a.domain_ratio or base.domain_ratio, lang_ratio=lang_ratio)
    paths = _find_manifests(a.manifests)
    try:
        buckets = plan(paths, a.kind, spec)
    except BlendError:
        raise
    except (FileNotFoundError, ValueError) as e:  # a missing or unfinished tokenize manifest
        raise BlendError(str(e)) from None
    data_path = solve_blend(paths, a.kind, spec)
    train_tokens = a.train_tokens or (a.steps * a.global_batch_size * a.seq_length
                                      if a.steps and a.global_batch_size and a.seq_length else None)
    summary = {"kind": a.kind, "spec": {"domain_ratio": spec.domain_ratio, "lang_ratio": spec.lang_ratio},
               "buckets": {b.name: {"share": b.share, "tokens": b.tokens, "shards": len(b.prefixes)} for b in buckets},
               "data_path": data_path, "train_tokens": train_tokens}
    short = {}
    if train_tokens:
        ep = epochs_needed(buckets, int(train_tokens))
        for name, e in ep.items():
            summary["buckets"][name]["epochs_needed"] = round(e, 4)
        short = {n: e for n, e in ep.items() if e > a.max_epochs}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    if a.check:
        summary["check"] = check_blend(paths, data_path, seq_length=a.seq_length or 256,
                                       num_samples=a.check_samples)
    Path(a.out).write_text(_yaml(a.kind, data_path, {b.name: b.share for b in buckets}))
    write_json(str(Path(a.out).with_suffix(".json")), summary)
    for name, b in summary["buckets"].items():
        real = f"  realized {summary['check']['buckets'].get(name, 0):.4f}" if a.check else ""
        ep = f"  epochs {b['epochs_needed']:.2f}" if "epochs_needed" in b else ""
        print(f"{name:14s} share {b['share']:.4f}  tokens {b['tokens']:>14,}{ep}{real}")
    print(f"wrote {a.out}")
    if short:
        need = ", ".join(f"{n} needs {e:.2f} epochs ({summary['buckets'][n]['tokens']:,} tokens, "
                         f"{summary['buckets'][n]['share'] * train_tokens:,.0f} wanted)" for n, e in short.items())
        print(f"blend: too little data for {int(train_tokens):,} training tokens at --max-epochs {a.max_epochs}: "
              f"{need}. Add data, lower the step count, or raise --max-epochs to accept upsampling.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    from carebot.cli import script

    script(main, "carebot data blend")
