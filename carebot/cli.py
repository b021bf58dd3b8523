"""`carebot`: the front door. Each subcommand maps straight to one `main(argv) -> int` in a stage module.

`run` is the one place a `CareBotError` (bad input, bad config, missing file) becomes one line
`carebot <cmd>: error: <first line>` on stderr and exit status 2, without a traceback: the dispatch below, each
module's `if __name__ == "__main__":` block (`script(main, prog)`) and the training stages' mains go through it.
Library code only raises, so a reader called from a notebook raises an exception instead of exiting."""
from __future__ import annotations

import errno
import importlib
import sys
import warnings
from typing import Callable, NoReturn

from carebot.errors import CareBotError, one_line
from carebot.procs import children_die_with_me

# What the command line reports as one line + exit 2: the stack's own errors and what the file system says
# about a path the user gave (missing, a directory where a file goes, a file where a directory goes, read-only,
# full). Network and other OS errors stay tracebacks: they are not about the user's input.
FS_ERRORS: tuple[type[OSError], ...] = (FileNotFoundError, IsADirectoryError, NotADirectoryError, FileExistsError,
                                        PermissionError)
FS_ERRNOS = (errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.ENAMETOOLONG, errno.EFBIG)
USER_ERRORS: tuple[type[BaseException], ...] = (CareBotError, *FS_ERRORS)


def _message(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:  # "PATH: Not a directory", not "[Errno 20] Not a directory: 'PATH'"
        return f"{e.filename}: {e.strerror}" if e.filename else e.strerror
    return one_line(e)

# THE command table: the words a user types -> (module:function, one-line help). Modules are named as strings
# and imported only when their command runs (`carebot --help` stays fast, and this layer imports no stage).
COMMANDS: dict[str, tuple[str, str]] = {
    "data rules": ("data_tools.curate.rules:main", "bilingual rule filters + PII scrub"),
    "data label": ("data_tools.curate.label:main", "LLM labels (domain, quality), two rounds, keep consistent"),
    "data domain": ("data_tools.curate.domain:main", "train / apply the domain classifier"),
    "data datarater": ("data_tools.curate.datarater:main", "train / apply the DataRater quality regressor (0-5)"),
    "data decontam": ("data_tools.curate.decontam:main", "n-gram decontamination against every eval set"),
    "data dedup": ("data_tools.curate.dedup:main", "MinHash near-duplicate removal"),
    "data bucket": ("data_tools.curate.bucket:main", "split curated docs into {medical,general,medical_hq} x {zh,en}"),
    "data curate": ("data_tools.curate.curate:main", "the whole curation as one datatrove pipeline (local / SLURM / Ray)"),
    "data tokenize": ("data_tools.tokens.tokenize:main", "jsonl/parquet -> Megatron .bin/.idx (+ manifest)"),
    "data blend": ("data_tools.tokens.blend:main", "solve Stable / Boost blend weights from token manifests"),
    "data sft-build": ("data_tools.sft.sft_build:main", "merge, clean and decontaminate SFT dialogues"),
    "data deita": ("data_tools.sft.deita:main", "Deita complexity x quality scores"),
    "data confilter": ("data_tools.sft.confilter:main", "ConFilter CF = L(t|H)/L(t) for multi-turn dialogues"),
    "data dpo-pairs": ("data_tools.sft.dpo_pairs:main", "objective (MCQ) and subjective (judge) DPO pairs"),
    "pretrain": ("pretrain.train:main", "continued pre-training (Stable / Boost CPT) on megatron-core"),
    "convert": ("pretrain.convert_cli:main", "HF <-> Megatron checkpoints (hf-to-megatron | megatron-to-hf | verify)"),
    "sft": ("alignment.sft:main", "supervised fine-tuning, loss on assistant tokens only"),
    "dpo": ("alignment.dpo:main", "direct preference optimisation (dpo / ipo / rpo)"),
    "eval mcq": ("eval.mcq:main", "seven medical MCQ benchmarks (log-likelihood / generation), N seeds"),
    "eval judge": ("eval.judge:main", "LLM-judged consultation (consult: per turn; pairwise: A/B swap)"),
    "eval loss": ("eval.heldout:main", "held-out loss: text NLL and assistant-reply NLL of an HF model"),
    "eval report": ("eval.report:main", "Table-1 layout across models, paired t-tests, PNG plots"),
    "launch": ("launch.slurm_cli:main", "render / submit SLURM jobs and the stage chain"),
    "bench": ("launch.bench:main", "throughput benchmark: tokens/s/GPU, TFLOP/s, MFU"),
    "serve": ("launch.serve:main", "an OpenAI-compatible server (transformers / llama.cpp / vllm) for the LLM stages"),
    "demo": ("launch.demo.run:main", "the whole pipeline on real data with tiny models on CPU"),
}


def _usage(group: str | None = None) -> str:
    names = [k for k in COMMANDS if group is None or k.startswith(group + " ")]
    w = max(map(len, names)) + 2
    head = f"usage: carebot {group + ' ' if group else ''}<command> [args]  (carebot <command> --help for its options)"
    return "\n".join([head, "", "commands:"] + [f"  {k:<{w}}{COMMANDS[k][1]}" for k in names])


def resolve(argv: list[str]) -> tuple[str | None, list[str]]:
    """(command, its arguments): the longest command-table key the first words of argv spell."""
    for n in (2, 1):
        key = " ".join(argv[:n])
        if len(argv) >= n and key in COMMANDS:
            return key, argv[n:]
    return None, argv


def run(main_fn: Callable[[list[str] | None], int | None], argv: list[str] | None = None, prog: str = "carebot") -> int:
    """`main_fn(argv)` as the command line runs it: its exit status, or 2 with one line on stderr when it raises
    a CareBotError / FileNotFoundError (a `main()` returning non-zero for a real failure keeps its status)."""
    children_die_with_me()
    try:
        return int(main_fn(argv) or 0)
    except (CareBotError, OSError) as e:
        if not isinstance(e, USER_ERRORS) and e.errno not in FS_ERRNOS:  # an OSError not about a user's path
            raise
        print(f"{prog}: error: {_message(e)}", file=sys.stderr, flush=True)
        return 2


def script(main_fn: Callable[[list[str] | None], int | None], prog: str) -> NoReturn:
    """The `if __name__ == "__main__":` block of a command module (`python -m ...`, torchrun `-m ...`)."""
    sys.exit(run(main_fn, None, prog))


# Training stages: their recipe + overrides are validated here, before the stage module imports torch and
# megatron-core (seconds), so a bad value is one line at once instead of after the imports.
RUN_CONFIG_COMMANDS = ("pretrain", "sft", "dpo")


def check_run_config(argv: list[str] | None) -> int:
    """Load and validate the `--config` recipe(s) and `key=value` overrides of a training-stage command line
    (a ConfigError names the key); `-h` and a line without `--config` are left to the stage's own parser."""
    argv = list(argv or [])
    if "--config" not in argv or any(a in ("-h", "--help") for a in argv):
        return 0
    from carebot.run_config import load_config

    i = argv.index("--config")
    load_config([a for a in argv[i + 1:] if not a.startswith("-")], [a for a in argv[:i] if "=" in a])
    return 0


def _call(target: str, argv: list[str], prog: str) -> int:
    if prog.removeprefix("carebot ") in RUN_CONFIG_COMMANDS and (rc := run(check_run_config, argv, prog)):
        return rc
    mod, fn = target.split(":")
    return run(getattr(importlib.import_module(mod), fn), argv, prog)


def main(argv: list[str] | None = None) -> int:
    # megatron-core warns at import time that TE / apex are absent: expected on CPU, said once in the run log.
    warnings.filterwarnings("ignore", message=r".*(Transformer Engine|Apex|apex|full scope is deprecated).*")
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    command, rest = resolve(argv)
    if command is None:
        groups = {k.split()[0] for k in COMMANDS if " " in k}
        if argv[0] in groups and (len(argv) == 1 or argv[1] in ("-h", "--help")):
            print(_usage(argv[0]))
            return 0
        print(f"carebot: unknown command '{' '.join(argv[:2] if argv[0] in groups else argv[:1])}'\n\n"
              f"{_usage(argv[0] if argv[0] in groups else None)}", file=sys.stderr)
        return 2
    return _call(COMMANDS[command][0], rest, f"carebot {command}")


if __name__ == "__main__":
    sys.exit(main())
