"""`carebot`: the front door. Each subcommand maps straight to one `main(argv) -> int` in a stage module.

`run` is the one place a `CareBotError` (bad input, bad config, missing file) becomes one line
`carebot <cmd>: error: <first line>` on stderr and exit status 2, without a traceback: the dispatch below, each
module's `if __name__ == "__main__":` block (`script(main, prog)`) and the training stages' mains go through it.
Library code only raises, so a reader called from a notebook raises an exception instead of exiting."""
from __future__ import annotations

import importlib
import sys
import warnings
from typing import Callable, NoReturn

from carebot.errors import CareBotError, one_line

# What the command line reports as one line + exit 2: the stack's own errors and a missing file.
USER_ERRORS: tuple[type[BaseException], ...] = (CareBotError, FileNotFoundError)

# name -> (module:function, one-line help). Imported lazily: `carebot --help` stays fast.
COMMANDS: dict[str, tuple[str, str]] = {
    "pretrain": ("pretrain.train:main", "continued pre-training (Stable / Boost CPT) on megatron-core"),
    "sft": ("alignment.sft:main", "supervised fine-tuning, loss on assistant tokens only"),
    "dpo": ("alignment.dpo:main", "direct preference optimisation (dpo / ipo / rpo)"),
    "convert": ("pretrain.convert_cli:main", "HF <-> Megatron checkpoints (hf-to-megatron | megatron-to-hf | verify)"),
    "eval": ("eval.cli:main", "evaluation (mcq | judge | report)"),
    "launch": ("launch.slurm_cli:main", "render / submit SLURM jobs and the stage chain"),
    "bench": ("launch.bench:main", "throughput benchmark: tokens/s/GPU, TFLOP/s, MFU"),
    "demo": ("launch.demo.run:main", "the whole pipeline on real data with tiny models on CPU"),
}
DATA_COMMANDS: dict[str, tuple[str, str]] = {
    "rules": ("data_tools.curate.rules:main", "bilingual rule filters + PII scrub"),
    "label": ("data_tools.curate.label:main", "LLM labels (domain, quality), two rounds, keep consistent"),
    "domain": ("data_tools.curate.domain:main", "train / apply the domain classifier"),
    "datarater": ("data_tools.curate.datarater:main", "train / apply the DataRater quality regressor (0-5)"),
    "decontam": ("data_tools.curate.decontam:main", "n-gram decontamination against every eval set"),
    "dedup": ("data_tools.curate.dedup:main", "MinHash near-duplicate removal"),
    "bucket": ("data_tools.curate.bucket:main", "split curated docs into {medical,general,medical_hq} x {zh,en} shards"),
    "tokenize": ("data_tools.tokens.tokenize:main", "jsonl/parquet -> Megatron .bin/.idx (+ manifest)"),
    "blend": ("data_tools.tokens.blend:main", "solve Stable / Boost blend weights from token manifests"),
    "sft-build": ("data_tools.sft.sft_build:main", "merge, clean and decontaminate SFT dialogues"),
    "deita": ("data_tools.sft.deita:main", "Deita complexity x quality scores"),
    "confilter": ("data_tools.sft.confilter:main", "ConFilter CF = L(t|H)/L(t) for multi-turn dialogues"),
    "dpo-pairs": ("data_tools.sft.dpo_pairs:main", "objective (MCQ) and subjective (judge) DPO pairs"),
}


def _usage() -> str:
    w = max(map(len, list(COMMANDS) + list(DATA_COMMANDS))) + 7
    lines = ["usage: carebot <stage> [args]  (carebot <stage> --help for its options)", "", "stages:"]
    lines += [f"  {k:<{w}}{h}" for k, (_, h) in COMMANDS.items()]
    lines += ["", "data tools (carebot data <tool>):"]
    lines += [f"  data {k:<{w - 5}}{h}" for k, (_, h) in DATA_COMMANDS.items()]
    return "\n".join(lines)


def run(main_fn: Callable[[list[str] | None], int | None], argv: list[str] | None = None, prog: str = "carebot") -> int:
    """`main_fn(argv)` as the command line runs it: its exit status, or 2 with one line on stderr when it raises
    a CareBotError / FileNotFoundError (a `main()` returning non-zero for a real failure keeps its status)."""
    try:
        return int(main_fn(argv) or 0)
    except USER_ERRORS as e:
        print(f"{prog}: error: {one_line(e)}", file=sys.stderr, flush=True)
        return 2


def script(main_fn: Callable[[list[str] | None], int | None], prog: str) -> NoReturn:
    """The `if __name__ == "__main__":` block of a command module (`python -m ...`, torchrun `-m ...`)."""
    sys.exit(run(main_fn, None, prog))


def _call(target: str, argv: list[str], prog: str) -> int:
    mod, fn = target.split(":")
    return run(getattr(importlib.import_module(mod), fn), argv, prog)


def main(argv: list[str] | None = None) -> int:
    # megatron-core warns at import time that TE / apex are absent: expected on CPU, said once in the run log.
    warnings.filterwarnings("ignore", message=r".*(Transformer Engine|Apex|apex|full scope is deprecated).*")
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    stage, rest = argv[0], argv[1:]
    if stage == "data":
        if not rest or rest[0] in ("-h", "--help"):
            print(_usage())
            return 0
        table, stage, rest = DATA_COMMANDS, rest[0], rest[1:]
        prog = f"carebot data {stage}"
    else:
        table = COMMANDS
        prog = f"carebot {stage}"
        if stage == "eval" and rest and not rest[0].startswith("-"):  # eval dispatches once more
            prog += f" {rest[0]}"
    if stage not in table:
        print(f"carebot: unknown stage '{stage}'\n\n{_usage()}", file=sys.stderr)
        return 2
    return _call(table[stage][0], rest, prog)


if __name__ == "__main__":
    sys.exit(main())
