"""What every demo step shares: the run context, and running one `carebot` command as a user would."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from carebot.errors import CareBotError
from carebot.paths import cache_dir


# items per LLM step, (quick, full): rules = the rule-based endpoint, model = a real model (--llm serve / URL)
LLM_ITEMS = {
    "rules": {"label": (300, 800), "dpo_subjective": (40, 150), "judge_dialogues": (3, 10)},
    "model": {"label": (24, 200), "dpo_subjective": (8, 40), "judge_dialogues": (2, 10)},
}
# a real model's requests: as many as the CPU server batches well (8: launch/serve.py), a long wait for each
LLM_MODEL_ARGS = {"concurrency": "8", "timeout": "300"}


@dataclass
class Ctx:
    out: Path
    data: Path
    quick: bool
    tokenizer: str = "bpe"
    base_model: str = ""  # an HF model directory: the model stages start from it, with its tokenizer
    chat_template: str | None = None  # for a base model whose tokenizer has none (llama3 | chatml | FILE)
    llm_spec: str = "rules"  # --llm: rules | serve | URL
    llm_kind: str = "rules"  # "rules" (the rule-based endpoint) or "model" (a real model answers)
    llm_name: str = ""  # what answers, for the report
    base_url: str = ""
    models: dict = field(default_factory=dict)  # role (label, doctor, consult) -> the endpoint's model name
    counts: dict = field(default_factory=dict)

    def llm_items(self, what: str) -> int:
        """How many items an LLM step sends. A real model on 2 CPU cores answers a request in seconds (the
        rule-based endpoint in milliseconds), so a real model gets fewer."""
        quick, full = LLM_ITEMS[self.llm_kind][what]
        return quick if self.quick else full

    def llm_args(self, prefix: str = "--") -> list[str]:
        """A real model's request options for an LLM command (`--judge-` for eval judge)."""
        if self.llm_kind == "rules":
            return []
        return [a for k, v in LLM_MODEL_ARGS.items() for a in (f"{prefix}{k}", v)]

    def d(self, name: str) -> Path:
        p = self.out / name
        p.mkdir(parents=True, exist_ok=True)
        return p


def carebot(ctx: Ctx, step: str, *args: str) -> None:
    """Run one `carebot ...` command; its output goes to OUT/logs/<step>.log (tail shown on failure)."""
    log = ctx.d("logs") / f"{step}.log"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    cmd = [sys.executable, "-m", "carebot.cli", *args]
    with open(log, "a") as f:
        f.write(f"$ carebot {' '.join(args)}\n")
        f.flush()
        p = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=Path(__file__).parents[2])
    if p.returncode:
        tail = "".join(log.read_text(errors="replace").splitlines(True)[-25:])
        print(f"--- last lines of {log}:\n{tail}", file=sys.stderr, flush=True)
        raise CareBotError(f"demo step '{step}' failed (exit {p.returncode}); its log: {log}")


def llm_counts(stats: dict) -> dict:
    """The LLM client's per-item counts for the report: valid at the first reply, after a re-ask, given up."""
    return {"llm_first_valid": stats.get("first_valid", 0), "llm_after_reask": stats.get("after_reask", 0),
            "llm_given_up": stats.get("failures", 0)}


def jl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def write_jl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path



def tokenizer_dir(ctx: Ctx) -> Path:
    """The base model's own tokenizer (`--base-model`); else a 4k byte-level BPE trained on the demo's own
    corpus, with LLaMA-3's specials and chat template (the real LLaMA-3 tokenizer works the same way:
    `--tokenizer llama3`)."""
    from carebot.tokenizer import build_llama3_tokenizer, train_small_bpe

    if ctx.base_model:
        return Path(ctx.base_model)
    if ctx.tokenizer == "llama3":
        return build_llama3_tokenizer(cache_dir() / "llama3-tokenizer")
    return train_small_bpe([r["text"] for p in sorted((ctx.out / "corpus").glob("raw-*.jsonl")) for r in jl(p)],
                           ctx.out / "tokenizer", 4096)
