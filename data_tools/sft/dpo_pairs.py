"""`carebot data dpo-pairs`: DPO preference pairs (CareBot paper, RLHF section).

Objective pairs (against the "alignment tax"): an MCQ item's gold option is chosen, a random wrong option
(seeded per item id, so the pair does not depend on file order) is rejected. Options whose text equals the
gold text are never drawn; an item with no distinct wrong option is skipped.

Subjective pairs: prompts drawn (seeded) from the SFT dialogues, so pairs follow the SFT distribution. The
judge model writes an answer "as a professional and helpful doctor" (or the SFT model's own answers are
read from a file); the judge then compares it with the original reply on fluency, relevance, completeness
and medical proficiency, once in each order (A/B swapped) to cancel position bias. A pair is kept only when
both orders name the same answer as better; ties and disagreements are dropped. Every LLM call goes through
carebot.llm (cached: a rerun costs nothing).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import random
from pathlib import Path
from typing import Any, Literal

import pydantic

from carebot.config import parse_command
from carebot.errors import CareBotError, InputError
from carebot.io import iter_jsonl, read_jsonl, require_records, write_json, write_text
from carebot.text import lang_of
from data_tools.sft.formats import PAIR_FORMATS, Dialogue, Pair, read_sft, write_pairs
from carebot.llm import LLMClient, LLMConfig, Request

DOCTOR_SYSTEM = {"en": "You are a professional and helpful doctor. Answer the patient's last message accurately, clearly and kindly.",
                 "zh": "你是一名专业且乐于助人的医生。请准确、清晰、耐心地回答患者的最后一条消息。"}
GEN_INSTRUCTION = 'Reply with a JSON object {"answer": "<your reply as the doctor>"} and nothing else.'
JUDGE_PROMPT = """You are an expert medical reviewer. Compare two replies (A and B) to the patient's last message in the conversation below.
Rate each reply from 1 to 10 on: fluency, relevance, completeness, medical proficiency. Then name the better reply overall, or "tie".

<conversation>
{conversation}
</conversation>

<reply_A>
{a}
</reply_A>

<reply_B>
{b}
</reply_B>

Reply with ONLY a JSON object:
{{"A": {{"fluency": n, "relevance": n, "completeness": n, "proficiency": n}}, "B": {{...same keys...}}, "winner": "A" | "B" | "tie"}}"""


class Aspects(pydantic.BaseModel):
    fluency: int = pydantic.Field(ge=1, le=10)
    relevance: int = pydantic.Field(ge=1, le=10)
    completeness: int = pydantic.Field(ge=1, le=10)
    proficiency: int = pydantic.Field(ge=1, le=10)


class Verdict(pydantic.BaseModel):
    A: Aspects
    B: Aspects
    winner: Literal["A", "B", "tie"]


class Generated(pydantic.BaseModel):
    answer: str = pydantic.Field(min_length=1)


# ----------------------------------------------------------------------------- objective
def _item_rng(seed: int, key: str) -> random.Random:
    return random.Random(int(hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()[:16], 16))


def mcq_prompt(item: dict[str, Any]) -> str:
    opts = "\n".join(f"{k}. {v}" for k, v in item["options"].items())
    return f"{item['question']}\n{opts}"


def read_mcq(path: str | Path) -> list[dict[str, Any]]:
    """MCQ items {question, options {letter: text}, answer} of a JSONL file; a malformed one is an InputError
    naming file:line."""
    items = []
    for n, it in iter_jsonl(path):
        if not isinstance(it.get("question"), str):
            raise InputError(f"{path}:{n}: 'question' is {type(it.get('question')).__name__}, expected a string")
        opts = it.get("options")
        if not isinstance(opts, dict) or it.get("answer") not in opts:
            raise InputError(f"{path}:{n}: an MCQ item needs options {{A: ..}} and its answer among them")
        items.append(it)
    return items


def objective_pairs(items: list[dict[str, Any]], seed: int = 0, where: str = "mcq") -> tuple[list[Pair], int]:
    """(pairs, skipped). chosen = "<gold letter>. <gold text>", rejected = a random wrong option alike."""
    pairs, skipped = [], 0
    for n, it in enumerate(items, 1):
        opts, gold = it.get("options"), it.get("answer")
        if not isinstance(opts, dict) or gold not in (opts or {}):
            raise InputError(f"{where}:{n}: an MCQ item needs options {{A: ..}} and answer in them")
        wrong = [k for k, v in opts.items() if k != gold and str(v).strip() != str(opts[gold]).strip()]
        if not wrong:
            skipped += 1
            continue
        key = str(it.get("id", n))
        bad = _item_rng(seed, key).choice(sorted(wrong))
        pairs.append(Pair(prompt=[{"role": "user", "content": mcq_prompt(it)}], chosen=f"{gold}. {opts[gold]}",
                          rejected=f"{bad}. {opts[bad]}", id=f"obj-{key}",
                          meta={"kind": "objective", "source": it.get("source"), "gold": gold, "rejected_option": bad}))
    return pairs, skipped


# ----------------------------------------------------------------------------- subjective
def sample_prompts(dialogues: list[Dialogue], n: int | None, seed: int = 0) -> list[tuple[list[dict[str, str]], str, str]]:
    """(prompt messages, original reply, id) for n dialogues drawn without replacement (seeded): the prompt is
    the dialogue up to its last user message, the original reply is the assistant message after it."""
    cands = []
    for i, d in enumerate(dialogues):
        msgs = d.chat_messages()
        k = max((j for j, m in enumerate(msgs) if m["role"] == "assistant" and j > 0 and msgs[j - 1]["role"] == "user"), default=None)
        if k is not None:
            cands.append((msgs[:k], msgs[k]["content"], d.id or f"d{i}"))
    if n is not None and n < len(cands):
        cands = random.Random(seed).sample(cands, n)
    return cands


def _conversation(prompt: list[dict[str, str]]) -> str:
    return "\n".join(f"[{m['role']}] {m['content']}" for m in prompt)


def gen_request(pid: str, prompt: list[dict[str, str]]) -> Request:
    lang = lang_of(" ".join(m["content"] for m in prompt))
    msgs = [{"role": "system", "content": DOCTOR_SYSTEM[lang] + " " + GEN_INSTRUCTION}] + [m for m in prompt if m["role"] != "system"]
    return Request(id=pid, messages=msgs)


JUDGE_MAX_TOKENS = 160  # a verdict's JSON: eight scores and a winner


def judge_request(pid: str, prompt: list[dict[str, str]], a: str, b: str, order: str) -> Request:
    return Request(id=f"{pid}:{order}", messages=[{"role": "user", "content": JUDGE_PROMPT.format(conversation=_conversation(prompt), a=a, b=b)}],
                   params={"max_tokens": JUDGE_MAX_TOKENS})


def subjective_pairs(client: LLMClient, prompts: list[tuple[list[dict[str, str]], str, str]],
                     candidates: dict[str, str] | None = None, progress: bool = True) -> tuple[list[Pair], dict[str, int]]:
    """Generate (unless `candidates` gives the SFT model's answers by id), judge both orders, keep agreements."""
    counts = {"prompts": len(prompts), "gen_failed": 0, "judge_failed": 0, "tie": 0, "disagree": 0, "kept": 0,
              "chosen_generated": 0, "chosen_original": 0}
    if candidates is None:
        gens = client.map_json([gen_request(pid, p) for p, _, pid in prompts], Generated, progress=progress, desc="dpo generate")
        candidates = {r.id: r.value["answer"] for r in gens if r.ok}
    reqs = []
    for p, orig, pid in prompts:
        if pid not in candidates:
            counts["gen_failed"] += 1
            continue
        new = candidates[pid]
        reqs += [judge_request(pid, p, orig, new, "orig_first"), judge_request(pid, p, new, orig, "new_first")]
    verdicts = {r.id: r for r in client.map_json(reqs, Verdict, progress=progress, desc="dpo judge")}
    pairs = []
    for p, orig, pid in prompts:
        if pid not in candidates:
            continue
        v1, v2 = verdicts.get(f"{pid}:orig_first"), verdicts.get(f"{pid}:new_first")
        if not (v1 and v1.ok and v2 and v2.ok):
            counts["judge_failed"] += 1
            continue
        w1 = {"A": "original", "B": "generated", "tie": "tie"}[v1.value["winner"]]
        w2 = {"A": "generated", "B": "original", "tie": "tie"}[v2.value["winner"]]
        if "tie" in (w1, w2):
            counts["tie"] += 1
            continue
        if w1 != w2:
            counts["disagree"] += 1
            continue
        new = candidates[pid]
        chosen, rejected = (orig, new) if w1 == "original" else (new, orig)
        if chosen.strip() == rejected.strip():
            counts["tie"] += 1
            continue
        counts["kept"] += 1
        counts[f"chosen_{w1}"] += 1
        pairs.append(Pair(prompt=p, chosen=chosen, rejected=rejected, id=f"subj-{pid}",
                          meta={"kind": "subjective", "chosen_is": w1, "verdicts": [v1.value, v2.value]}))
    return pairs, counts


# ----------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="carebot data dpo-pairs", description=__doc__.split("\n")[0])
    ap.add_argument("--mcq", nargs="*", default=[], help="MCQ jsonl {question, options, answer} -> objective pairs")
    ap.add_argument("--sft", nargs="*", default=[], help="SFT dialogues jsonl -> subjective pairs (prompts drawn from them)")
    ap.add_argument("--n-subjective", type=int, default=None, help="prompts to draw (default: all)")
    ap.add_argument("--candidates", default=None, help="jsonl {id, answer}: the SFT model's answers instead of generating")
    ap.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    ap.add_argument("--model", default="gpt-4o", help="judge / generator model")
    ap.add_argument("--api-key-env", default="OPENAI_API_KEY")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--timeout", type=float, default=LLMConfig.timeout_s, help="seconds for one attempt of a request")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--format", choices=PAIR_FORMATS, default="trl")
    ap.add_argument("--out", required=True)
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--allow-empty", action="store_true", help="0 pairs (or empty inputs) are not an error")
    a = parse_command(ap, argv)
    if not a.mcq and not a.sft:
        raise InputError("give --mcq and/or --sft inputs")
    require_records(a.mcq + a.sft, a.allow_empty)
    out = Path(a.out)
    summary: dict[str, Any] = {"seed": a.seed, "format": a.format}
    obj: list[Pair] = []
    for f in a.mcq:
        ps, skipped = objective_pairs(read_mcq(f), a.seed, where=f)
        obj += ps
        summary.setdefault("objective_skipped", 0)
        summary["objective_skipped"] += skipped
    subj: list[Pair] = []
    if a.sft:
        dialogues = [d for f in a.sft for d in read_sft(f, allow_empty=True)]
        prompts = sample_prompts(dialogues, a.n_subjective, a.seed)
        cands = None
        if a.candidates:
            cands = {str(r["id"]): r["answer"] for r in read_jsonl(a.candidates)}
        out.mkdir(parents=True, exist_ok=True)
        client = LLMClient(LLMConfig(base_url=a.base_url, model=a.model, api_key_env=a.api_key_env,
                                     concurrency=a.concurrency, timeout_s=a.timeout,
                                     cache_path=str(out / "llm_cache.sqlite")))
        subj, counts = subjective_pairs(client, prompts, cands, progress=not a.no_progress)
        summary["subjective"] = counts
        summary["llm"] = client.stats.as_dict()
    summary["pairs"] = {"objective": len(obj), "subjective": len(subj)}
    if not obj + subj and not a.allow_empty:
        raise CareBotError(f"0 pairs made ({json.dumps(summary)}); nothing written (pass --allow-empty to accept)")
    write_pairs(out / "pairs.jsonl", obj + subj, a.format)
    write_json(out / "summary.json", summary)
    write_text(out / "report.md",
        f"# DPO pairs\n\n{len(obj)} objective + {len(subj)} subjective pairs (paper: 3,708 + 9,019), format `{a.format}`.\n\n"
        f"```json\n{json.dumps(summary, indent=2)}\n```\n")
    print(f"{len(obj)} objective + {len(subj)} subjective pairs -> {out / 'pairs.jsonl'}")
    return 0


if __name__ == "__main__":
    from carebot.cli import script

    script(main, "carebot data dpo-pairs")
