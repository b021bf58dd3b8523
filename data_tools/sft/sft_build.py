"""`carebot data sft-build`: merge, clean and decontaminate the SFT dialogues (CareBot paper, SFT data construction).

Sources (kind detected per record): multi-turn dialogues ({messages} / NeMo {conversations}), single-turn QA
({question, answer} or {instruction, output}), MCQ ({question, options, answer}, turned into a dialogue whose
reply states the answer and the explanation when there is one). `--input` files are kept as they are
(authentic doctor-patient dialogues); `--rewrite` files get every assistant turn rewritten by the LLM client
(as a professional doctor, given the history), as the paper rewrites the non-authentic part with GPT-4.
Then, in the paper's order: duplicates removed (exact, after NFKC / case / whitespace normalisation),
unsafe content dropped (data_tools.curate.rules' word lists, >= `min_bad_hits` hits), and eval overlap removed
with data_tools.curate.decontam (manifest.json lists which benchmark items were seen).
"""
from __future__ import annotations

import argparse
import hashlib
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydantic

from carebot.config import parse_command
from carebot.errors import InputError
from carebot.io import iter_jsonl, require_records, write_json, write_jsonl
from carebot.text import lang_of
from data_tools.sft.formats import SFT_FORMATS, Dialogue, sft_from_record, sft_to_record
from carebot.llm import LLMClient, LLMConfig

MCQ_ANSWER = {"zh": "答案：{k}. {v}", "en": "Answer: {k}. {v}"}


@dataclass(kw_only=True)
class SFTBuildConfig:
    min_bad_hits: int = 1  # dialogues are short: one porn / gambling / abuse term is enough to drop
    decontam: bool = True
    benchmarks: dict[str, str] = field(default_factory=dict)  # name -> path; empty -> decontam's defaults
    format: str = "openai"


def to_dialogue(rec: dict[str, Any], where: str) -> tuple[Dialogue, str]:
    """(dialogue, kind) from a record of any supported source schema."""
    rid = rec.get("id")
    if "messages" in rec or "conversations" in rec:
        return sft_from_record(rec, "auto", where), "dialogue"
    meta = {k: v for k, v in rec.items() if k in ("source", "lang", "department", "dept1", "subject")}
    if isinstance(rec.get("options"), dict):
        opts, gold = rec["options"], rec.get("answer")
        if gold not in opts:
            raise InputError(f"{where}: MCQ answer {gold!r} is not one of its options")
        q = f"{rec['question']}\n" + "\n".join(f"{k}. {v}" for k, v in opts.items())
        lang = rec.get("lang") or lang_of(q)
        a = MCQ_ANSWER["zh" if lang == "zh" else "en"].format(k=gold, v=opts[gold])
        if rec.get("explanation"):
            a += "\n" + str(rec["explanation"])
        return Dialogue(messages=[{"role": "user", "content": q}, {"role": "assistant", "content": a}], id=rid, meta=meta), "mcq"
    for qk, ak in (("question", "answer"), ("instruction", "output")):
        if isinstance(rec.get(qk), str) and isinstance(rec.get(ak), str):
            q = rec[qk] + (("\n" + rec["input"]) if qk == "instruction" and rec.get("input") else "")
            return Dialogue(messages=[{"role": "user", "content": q}, {"role": "assistant", "content": rec[ak]}],
                            id=None if rid is None else str(rid), meta=meta), "qa"
    raise InputError(f"{where}: unknown record schema (keys {sorted(rec)[:8]})")


def load(paths: list[str]) -> tuple[list[Dialogue], Counter]:
    out, kinds = [], Counter()
    for p in paths:
        for n, rec in iter_jsonl(p):
            d, kind = to_dialogue(rec, f"{p}:{n}")
            if not d.messages or d.messages[0]["role"] != "user" or not any(m["role"] == "assistant" for m in d.messages):
                raise InputError(f"{p}:{n}: a dialogue must start with a user message and have a reply")
            d.meta.setdefault("sft_source", Path(p).stem)
            d.meta["sft_kind"] = kind
            out.append(d)
            kinds[kind] += 1
    return out, kinds


class _Answer(pydantic.BaseModel):
    answer: str = pydantic.Field(min_length=1)


def rewrite(dialogues: list[Dialogue], client: LLMClient, progress: bool = True) -> tuple[list[Dialogue], int]:
    """Every assistant turn rewritten by the LLM as a professional doctor, given the history so far (the
    original history: requests are independent, so they run concurrently). Failed items keep the original."""
    from data_tools.sft.dpo_pairs import gen_request

    reqs, where = [], []
    for j, d in enumerate(dialogues):
        msgs = d.chat_messages()
        for k, m in enumerate(msgs):
            if m["role"] == "assistant":
                reqs.append(gen_request(f"{j}:{k}", msgs[:k]))
                where.append((j, k))
    res = client.map_json(reqs, _Answer, progress=progress, desc="sft rewrite")
    failed = 0
    new = [Dialogue(messages=[dict(m) for m in d.messages], system=d.system, id=d.id, meta=dict(d.meta)) for d in dialogues]
    for (j, k), r in zip(where, res):
        if not r.ok:
            failed += 1
            continue
        off = 1 if new[j].system else 0
        new[j].messages[k - off]["content"] = r.value["answer"].strip()
        new[j].meta["rewritten"] = True
    return new, failed


def norm_key(d: Dialogue) -> str:
    t = "\n".join(m["content"] for m in d.chat_messages())
    t = re.sub(r"\s+", "", unicodedata.normalize("NFKC", t).lower())
    return hashlib.sha1(t.encode()).hexdigest()


def unsafe_hits(d: Dialogue) -> list[str]:
    from data_tools.curate.rules import _badwords

    en, zh = _badwords()
    t = "\n".join(m["content"] for m in d.chat_messages())
    return en.findall(t) + zh.findall(t)


def build(inputs: list[str], rewrite_inputs: list[str], out: Path, cfg: SFTBuildConfig, client: LLMClient | None = None,
          progress: bool = True, allow_empty: bool = False) -> dict[str, Any]:
    require_records(inputs + rewrite_inputs, allow_empty)
    kept, kinds = load(inputs)
    rw, rw_kinds = load(rewrite_inputs)
    out.mkdir(parents=True, exist_ok=True)
    failed = 0
    if rw:
        if client is None:
            raise InputError("--rewrite needs an LLM endpoint (--base-url / --model)")
        rw, failed = rewrite(rw, client, progress)
    dialogues = kept + rw
    excluded: list[dict[str, Any]] = []
    seen: set[str] = set()
    clean: list[Dialogue] = []
    for d in dialogues:
        k = norm_key(d)
        if k in seen:
            excluded.append({**sft_to_record(d), "drop_reason": "duplicate"})
            continue
        seen.add(k)
        hits = unsafe_hits(d)
        if len(hits) >= cfg.min_bad_hits:
            excluded.append({**sft_to_record(d), "drop_reason": "unsafe", "hits": hits[:10]})
            continue
        clean.append(d)
    stage = out / "stage"
    write_jsonl(stage / "sft.jsonl", (sft_to_record(d, "openai") for d in clean))
    removed_eval = 0
    if cfg.decontam:
        from data_tools.curate.decontam import DecontamConfig, Index, decontaminate

        man = decontaminate([stage / "sft.jsonl"], out / "decontam", Index(DecontamConfig(benchmarks=cfg.benchmarks)), progress)
        gone = {r["line"] for r in man["removed"]}
        for n, d in enumerate(list(clean), 1):
            if n in gone:
                excluded.append({**sft_to_record(d), "drop_reason": "eval_overlap"})
        clean = [d for n, d in enumerate(clean, 1) if n not in gone]
        removed_eval = len(gone)
    write_jsonl(out / "sft.jsonl", (sft_to_record(d, cfg.format) for d in clean))
    write_jsonl(out / "excluded.jsonl", excluded)
    reasons = Counter(e["drop_reason"] for e in excluded)
    summary = {"inputs": {"kept_as_is": inputs, "rewritten": rewrite_inputs}, "kinds": dict(kinds + rw_kinds),
               "read": len(dialogues), "rewrite_failed_turns": failed, "dropped": dict(reasons), "written": len(clean),
               "eval_overlap_removed": removed_eval, "format": cfg.format,
               "multi_turn": sum(len(d.turns()) > 1 for d in clean)}
    write_json(out / "summary.json", summary)
    rows = "".join(f"| {k} | {v} |\n" for k, v in summary["dropped"].items())
    (out / "report.md").write_text(
        f"# SFT build\n\n{summary['read']} dialogues read ({', '.join(f'{k}: {v}' for k, v in summary['kinds'].items())}); "
        f"{len(rw)} rewritten by the LLM; {summary['written']} written ({summary['multi_turn']} multi-turn).\n\n"
        f"| dropped | n |\n|---|---|\n{rows}\n" + ("Eval overlap: see decontam/manifest.json.\n" if cfg.decontam else ""), encoding="utf-8")
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="carebot data sft-build", description=__doc__.split("\n")[0])
    ap.add_argument("--input", nargs="*", default=[], help="sources kept as they are (authentic dialogues, QA, MCQ)")
    ap.add_argument("--rewrite", nargs="*", default=[], help="sources whose replies the LLM rewrites")
    ap.add_argument("--out", required=True)
    ap.add_argument("--format", choices=SFT_FORMATS, default="openai")
    ap.add_argument("--min-bad-hits", type=int, default=1)
    ap.add_argument("--no-decontam", action="store_true")
    ap.add_argument("--bench", action="append", default=[], help="NAME=PATH eval set (replaces the default list)")
    ap.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    ap.add_argument("--model", default="gpt-4o")
    ap.add_argument("--api-key-env", default="OPENAI_API_KEY")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--allow-empty", action="store_true", help="inputs with no records are not an error")
    a = parse_command(ap, argv)
    if not a.input and not a.rewrite:
        raise InputError("give --input and/or --rewrite files")
    benches = {}
    for b in a.bench:
        if "=" not in b:
            raise InputError(f"--bench {b!r}: expected NAME=PATH")
        k, v = b.split("=", 1)
        benches[k] = v
    cfg = SFTBuildConfig(min_bad_hits=a.min_bad_hits, decontam=not a.no_decontam, benchmarks=benches, format=a.format)
    out = Path(a.out)
    client = None
    if a.rewrite:
        client = LLMClient(LLMConfig(base_url=a.base_url, model=a.model, api_key_env=a.api_key_env,
                                     cache_path=str(out / "llm_cache.sqlite")))
    s = build(a.input, a.rewrite, out, cfg, client, progress=not a.no_progress, allow_empty=a.allow_empty)
    print(f"{s['written']} dialogues -> {out / 'sft.jsonl'}; dropped {s['dropped']}")
    return 0


if __name__ == "__main__":
    from carebot.cli import script

    script(main, "carebot data sft-build")
