"""`carebot eval mcq|judge|report`: one front door for the evaluation stage."""
from __future__ import annotations

import importlib
import sys

SUB = {"mcq": ("eval.mcq", "seven medical MCQ benchmarks (log-likelihood / generation), N seeds"),
       "judge": ("eval.judge", "LLM-judged consultation (consult: per turn, 4 dimensions; pairwise: A/B swap)"),
       "report": ("eval.report", "Table-1 layout across models, paired t-tests, PNG plots")}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in SUB:
        print("usage: carebot eval {mcq|judge|report} [args]\n" + "\n".join(f"  {k:<8}{h}" for k, (_, h) in SUB.items()))
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    return int(importlib.import_module(SUB[argv[0]][0]).main(argv[1:]) or 0)


if __name__ == "__main__":
    from carebot.cli import script

    script(main, "carebot eval")
