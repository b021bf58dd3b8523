"""The command line of every training stage (`carebot pretrain | sft | dpo`): `--config` recipe(s) + dotted
overrides -> `pretrain.trainer.run`, with the stage's errors as one line (`carebot.cli.run`)."""
from __future__ import annotations

from typing import Callable

import torch

from carebot.errors import ConfigError, one_line
from carebot.run_config import RunConfig
from pretrain.trainer import Stage, run


def stage_main(argv: list[str] | None, prog: str, doc: str, make_stage: Callable[[RunConfig], Stage]) -> int:
    """The CLI of every training stage: `--config` recipe(s) + dotted overrides -> `run`; a ConfigError /
    CheckpointError / missing file is one line on stderr and exit code 2 (`carebot.cli.run`)."""
    import argparse

    from carebot.cli import run as run_command
    from carebot.run_config import load_config

    ap = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, nargs="+", help="recipe YAML(s), merged left to right")
    ap.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.train_steps=50")
    args = ap.parse_args(argv)

    def go(_argv) -> int:
        cfg = load_config(args.config, args.overrides)
        stage = make_stage(cfg)
        if cfg.stage != stage.name:
            raise ConfigError(f"stage={cfg.stage!r}, but {prog} runs the {stage.name} stage; use the command of "
                              f"that stage (or set stage={stage.name})")
        try:
            run(cfg, stage)
        except (torch.OutOfMemoryError, RuntimeError) as e:
            if isinstance(e, torch.OutOfMemoryError) or "can't allocate memory" in str(e):
                raise ConfigError(f"out of memory ({one_line(e)[:160]}); lower data.seq_length or "
                                  "train.micro_batch_size, or add GPUs / parallelism") from None
            raise
        return 0
    return run_command(go, None, prog)

