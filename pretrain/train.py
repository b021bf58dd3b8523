"""`carebot pretrain`: continued pre-training (Stable / Boost CPT)."""
from __future__ import annotations


from carebot.run_config import RunConfig
from pretrain.data import build_gpt_datasets
from pretrain.stage_cli import stage_main
from pretrain.trainer import Stage


def _cpt_datasets(cfg: RunConfig, tokenizer, num_samples: list[int]):
    train, valid, _ = build_gpt_datasets(cfg, tokenizer, num_samples + [0])
    return train, valid


CPT = Stage(name="cpt", build_datasets=_cpt_datasets)


def main(argv: list[str] | None = None) -> int:
    return stage_main(argv, "carebot pretrain", __doc__, lambda cfg: CPT)


if __name__ == "__main__":
    from carebot.cli import script

    script(main, "carebot pretrain")
