"""`carebot pretrain`: continued pre-training (Stable / Boost CPT)."""
from __future__ import annotations

import argparse

from pretrain.config import RunConfig, load_config
from pretrain.data import build_gpt_datasets
from pretrain.trainer import Stage, exit_code_for_errors, run


def _cpt_datasets(cfg: RunConfig, tokenizer, num_samples: list[int]):
    train, valid, _ = build_gpt_datasets(cfg, tokenizer, num_samples + [0])
    return train, valid


CPT = Stage(name="cpt", build_datasets=_cpt_datasets)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="carebot pretrain", description=__doc__)
    ap.add_argument("--config", required=True, nargs="+",
                    help="recipe YAML(s), merged left to right (e.g. stable_cpt.yaml runs/blend/stable.yaml)")
    ap.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.train_steps=50")
    args = ap.parse_args(argv)
    return exit_code_for_errors(lambda: run(load_config(args.config, args.overrides), CPT))


if __name__ == "__main__":
    raise SystemExit(main())
