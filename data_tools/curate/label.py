"""`carebot data label`: LLM domain labels + DataRater 0-5 quality scores, two rounds, keep consistent items.

Paper (CareBot, data section): GPT-4 labels each sample twice; domain labels must agree, and samples whose
two quality scores differ by about 2 are dropped (40k -> 36k, 20k -> 15k kept). The rubric below is the
paper's DataRater rubric. Rounds differ by `seed` (and cache tag), so a rerun of either round is free.

Output dir: train.jsonl (id, text, lang, domain, quality, q1, q2), dropped.jsonl (with reason),
rounds.jsonl (raw answers), summary.json, report.md, config.json.
"""
from __future__ import annotations

import argparse
import asyncio
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pydantic

from carebot.config import parse_command
from carebot.errors import CareBotError, InputError
from carebot.io import iter_jsonl, require_records, write_json, write_jsonl, write_text
from carebot.text import lang_of, record_text
from carebot.llm import AsyncLLMClient, LLMConfig, Request

RUBRIC = """You are a data-quality rater for a bilingual (Chinese/English) medical language-model corpus.
Read the document and answer with ONLY a JSON object: {{"domain": <one of {taxonomy}>, "quality": <integer 0-5>, "reason": <at most 20 words>}}.

domain: the main subject of the document{medical_hint}.
quality (0 = useless, 5 = excellent), judged on:
- grammatical accuracy and fluency;
- information density (facts, explanations, not filler);
- semantic consistency (one coherent topic, not spliced unrelated pieces);
- domain relevance (clear, specific content for its domain).
Penalise heavily: advertising or marketing, spliced unrelated content, image/video captions, navigation or
boilerplate text, garbled text."""


@dataclass(kw_only=True)
class LabelConfig:
    taxonomy: list[str] = field(default_factory=lambda: ["medical", "general"])
    rounds: int = 2
    score_gap: int = 2  # drop if |q1 - q2| >= score_gap (paper: "differ by about 2")
    max_chars: int = 2000  # documents are truncated in the prompt
    temperature: float = 0.7  # > 0 so the two rounds are independent samples
    # what the answer needs (~20 tokens of JSON + a 20-word reason): a reply that runs on is cut here and re-asked,
    # instead of costing the endpoint's default (often thousands of tokens)
    max_tokens: int = 96
    llm: LLMConfig = field(default_factory=LLMConfig)


class LabelAnswer(pydantic.BaseModel):
    domain: str
    quality: int = pydantic.Field(ge=0, le=5)
    reason: str = ""


def _validator(taxonomy: list[str]):
    def check(obj: Any) -> dict:
        v = LabelAnswer.model_validate(obj).model_dump()
        v["domain"] = v["domain"].strip().lower()
        if v["domain"] not in taxonomy:
            raise ValueError(f"domain {v['domain']!r} not in {taxonomy}")
        return v

    check.json_schema = {**LabelAnswer.model_json_schema(),  # what a server's structured output can enforce
                         "properties": {**LabelAnswer.model_json_schema()["properties"],
                                        "domain": {"type": "string", "enum": list(taxonomy)}}}
    return check


def build_messages(text: str, cfg: LabelConfig) -> list[dict[str, str]]:
    hint = " ('medical' covers medicine, health, disease, drugs, clinical care)" if "medical" in cfg.taxonomy else ""
    system = RUBRIC.format(taxonomy=json.dumps(cfg.taxonomy), medical_hint=hint)
    return [{"role": "system", "content": system}, {"role": "user", "content": f"<document>\n{text[: cfg.max_chars]}\n</document>"}]


def requests_for(items: list[dict], cfg: LabelConfig, rnd: int) -> list[Request]:
    return [Request(f"{it['id']}#r{rnd}", build_messages(it["text"], cfg), {"seed": rnd, "temperature": cfg.temperature, "max_tokens": cfg.max_tokens}, f"label-r{rnd}")
            for it in items]


def load_items(paths: list[str], limit: int | None = None, allow_empty: bool = False) -> list[dict]:
    require_records(paths, allow_empty)
    items, seen = [], set()
    for p in paths:
        for n, rec in iter_jsonl(p):
            text = record_text(rec, f"{p}:{n}").strip()
            if not text:
                continue
            rid = str(rec.get("id", f"{Path(p).stem}:{n}"))
            if rid in seen:
                raise InputError(f"{p}:{n}: duplicate id {rid!r}")
            seen.add(rid)
            items.append({"id": rid, "text": text, "lang": rec.get("lang") or lang_of(text)})
            if limit and len(items) >= limit:
                return items
    return items


def consistent(answers: list[dict], gap: int) -> tuple[bool, str]:
    if len({a["domain"] for a in answers}) > 1:
        return False, "domain_disagree"
    qs = [a["quality"] for a in answers]
    if max(qs) - min(qs) >= gap:
        return False, "score_gap"
    return True, ""


async def run_label(items: list[dict], cfg: LabelConfig, progress: bool = True) -> dict[str, Any]:
    client = AsyncLLMClient(cfg.llm)
    check = _validator(cfg.taxonomy)
    try:
        per_round = []
        for r in range(1, cfg.rounds + 1):
            res = await client.map_json(requests_for(items, cfg, r), check, progress=progress, desc=f"label round {r}")
            per_round.append(res)
    finally:
        await client.aclose()
    kept, dropped, raw = [], [], []
    for i, it in enumerate(items):
        answers = [rs[i] for rs in per_round]
        raw.append({"id": it["id"], "answers": [a.value if a.ok else {"error": a.error} for a in answers]})
        if not all(a.ok for a in answers):
            bad = next(a for a in answers if not a.ok)
            dropped.append({**it, "reason": "llm_failed", "error": bad.error, "raw": bad.raw})
            continue
        vals = [a.value for a in answers]
        ok, why = consistent(vals, cfg.score_gap)
        rec = {**it, "domain": vals[0]["domain"], "quality": sum(v["quality"] for v in vals) / len(vals),
               **{f"q{j + 1}": v["quality"] for j, v in enumerate(vals)}}
        (kept if ok else dropped).append(rec if ok else {**rec, "reason": why})
    return {"kept": kept, "dropped": dropped, "raw": raw, "stats": client.stats.as_dict()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="carebot data label", description=__doc__.splitlines()[0])
    ap.add_argument("--input", nargs="+", required=True, help="jsonl files (any record schema with text)")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--base-url", default=LLMConfig.base_url)
    ap.add_argument("--model", default=LLMConfig.model)
    ap.add_argument("--api-key-env", default=LLMConfig.api_key_env, help="NAME of the env var holding the key")
    ap.add_argument("--concurrency", type=int, default=LLMConfig.concurrency)
    ap.add_argument("--timeout", type=float, default=LLMConfig.timeout_s)
    ap.add_argument("--max-retries", type=int, default=LLMConfig.max_retries)
    ap.add_argument("--parse-retries", type=int, default=LLMConfig.parse_retries, help="re-asks after an invalid answer")
    ap.add_argument("--backoff", type=float, default=LLMConfig.backoff_base_s, help="base backoff seconds")
    ap.add_argument("--taxonomy", default="medical,general")
    ap.add_argument("--score-gap", type=int, default=LabelConfig.score_gap)
    ap.add_argument("--max-tokens", type=int, default=LabelConfig.max_tokens, help="cap on one answer's tokens")
    ap.add_argument("--min-labelled", type=float, default=0.5,
                    help="fail (exit 2) when fewer items than this share got a valid answer in every round")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--structured", choices=["auto", "off"], default=LLMConfig.structured,
                    help="auto: ask for JSON-schema output where the endpoint takes it; off: never (parse and re-ask)")
    ap.add_argument("--cache", default=None, help="SQLite cache (default OUT/llm_cache.sqlite)")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--allow-empty", action="store_true", help="an input with no documents is not an error")
    a = parse_command(ap, argv)
    items = load_items(a.input, a.limit, a.allow_empty)  # bad input stops here, before any output exists
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    llm = LLMConfig(base_url=a.base_url, model=a.model, api_key_env=a.api_key_env, concurrency=a.concurrency, timeout_s=a.timeout,
                    max_retries=a.max_retries, parse_retries=a.parse_retries, backoff_base_s=a.backoff, backoff_max_s=max(a.backoff * 30, 0.05),
                    cache_path=a.cache or str(out / "llm_cache.sqlite"), structured=a.structured)
    cfg = LabelConfig(taxonomy=a.taxonomy.split(","), score_gap=a.score_gap, max_tokens=a.max_tokens, llm=llm)
    print(json.dumps(asdict(cfg), indent=1))
    write_json(out / "config.json", asdict(cfg))
    res = asyncio.run(run_label(items, cfg, progress=not a.no_progress))
    write_jsonl(out / "train.jsonl", res["kept"])
    write_jsonl(out / "dropped.jsonl", res["dropped"])
    write_jsonl(out / "rounds.jsonl", res["raw"])
    reasons: dict[str, int] = {}
    for d in res["dropped"]:
        reasons[d["reason"]] = reasons.get(d["reason"], 0) + 1
    by_domain: dict[str, int] = {}
    for k in res["kept"]:
        by_domain[k["domain"]] = by_domain.get(k["domain"], 0) + 1
    summary = {"items": len(items), "kept": len(res["kept"]), "dropped": reasons, "kept_by_domain": by_domain, "llm": res["stats"]}
    write_json(out / "summary.json", summary)
    write_text(out / "report.md",
        f"# Label report\n\n{len(items)} items, {len(res['kept'])} kept after {cfg.rounds} rounds "
        f"(score gap < {cfg.score_gap}, domains equal).\n\n| dropped reason | n |\n|---|---|\n"
        + "".join(f"| {k} | {v} |\n" for k, v in reasons.items())
        + f"\nLLM: {res['stats']['requests']} requests, {res['stats']['cache_hits']} cache hits, "
        f"{res['stats']['prompt_tokens']}+{res['stats']['completion_tokens']} tokens, ${res['stats']['cost_usd']:.4f}\n")
    print(json.dumps(summary, ensure_ascii=False))
    failed = reasons.get("llm_failed", 0)
    if items and len(items) - failed < a.min_labelled * len(items):
        eg = next((d["error"] for d in res["dropped"] if d["reason"] == "llm_failed"), "")
        raise CareBotError(f"{len(items) - failed} of {len(items)} items labelled in every round, below --min-labelled "
                           f"{a.min_labelled} (given up, e.g. {eg[:160]!r}; each with its raw reply in "
                           f"{out / 'dropped.jsonl'})")
    if failed:
        print(f"{failed} of {len(items)} items given up (in {out / 'dropped.jsonl'} with their raw replies)")
    return 0


if __name__ == "__main__":
    from carebot.cli import script

    script(main, "carebot data label")
