"""Consultation evaluation with an LLM judge (`carebot eval judge consult|pairwise`), paper Tables 2-4, Fig. 3.

consult: CMtMedQA / CMB-Clin dialogues. At each turn the model answers given the GOLD history (so one bad
turn does not poison the next); the judge scores fluency, relevance, completeness, proficiency (1-5)
against the reference answer. Replies are parsed strictly (a JSON object with exactly those four integer
keys, 1..5, optional "reason"); a malformed reply is re-asked by `carebot.llm`, and an item still
malformed is counted as a failure, never scored. Per-turn and overall tables.
pairwise: single-turn Huatuo26M-test: the judge compares answers A and B twice, with positions swapped; the
two verdicts are summed (A=+1, tie=0, B=-1) into win / tie / loss for A.

Model answers are stored per (dialogue, turn) and judge replies are cached on disk (SQLite, keyed by
prompt), so a rerun makes zero requests and regenerates nothing.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from carebot.config import parse_command
from carebot.errors import CareBotError, ConfigError, InputError
from carebot.io import write_text
from carebot.llm import LLMClient, LLMConfig, Request
from eval.contamination import check_contamination
from eval.engine import EngineConfig, build_engine
from eval.mcq import add_engine_args, engine_from_args

DIMS = ("fluency", "relevance", "completeness", "proficiency")
CONSULT = {"cmtmedqa": "dialogue/cmtmedqa_test.jsonl", "cmb_clin": "benchmarks/cmb_clin.jsonl"}
SINGLE = {"huatuo26m": "dialogue/huatuo26m_test_sample.jsonl"}

JUDGE_SYSTEM = ("你是一名资深医学专家，负责评估AI医生在医患对话中的回答质量。请参考标准答案，从以下四个维度分别给出1-5的整数分："
                "fluency（流畅性：语言是否通顺、连贯）、relevance（相关性：是否紧扣患者当前问题与上下文）、"
                "completeness（完整性：是否覆盖标准答案中的要点）、proficiency（专业性：医学知识是否准确、专业）。"
                '只输出一个JSON对象，例如 {"fluency": 5, "relevance": 4, "completeness": 3, "proficiency": 4, "reason": "..."}。')
PAIR_SYSTEM = ("你是一名资深医学专家。比较两个AI医生对同一患者问题的回答，综合流畅性、相关性、完整性和专业性，判断哪个更好。"
               '只输出一个JSON对象：{"winner": "1"} 或 {"winner": "2"} 或 {"winner": "tie"}。')


@dataclass(kw_only=True)
class Turn:
    dialogue: str
    turn: int  # 1-based
    history: list[dict]  # gold messages before this turn's user message
    question: str
    reference: str


@dataclass(kw_only=True)
class JudgeConfig:
    out: str
    llm: LLMConfig
    engine: EngineConfig | None = None
    name: str = ""
    benchmarks: tuple[str, ...] = ("cmtmedqa", "cmb_clin")
    paths: dict[str, str] = field(default_factory=dict)
    limit: int | None = None  # dialogues (consult) or questions (pairwise)
    max_turns: int | None = None
    max_new_tokens: int = 256
    temperature: float = 0.0
    seed: int = 0
    contamination: str = "error"
    decontam_manifest: str | None = None
    min_judged: float = 0.5  # the command fails (no average reported) when fewer turns than this share were judged


# ----------------------------------------------------------------------------- data
def _jsonl(path: Path) -> list[dict]:
    out = []
    with open(path, encoding="utf-8") as f:
        for ln, line in enumerate(f, 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise InputError(f"{path}:{ln}: not JSON ({e.msg})") from None
    return out


def _resolve(bench: str, paths: dict[str, str]) -> Path:
    if bench in paths:
        return Path(paths[bench])
    table = {**CONSULT, **SINGLE}
    if bench not in table:
        raise ConfigError(f"unknown consultation benchmark {bench!r}; known: {', '.join(table)}")
    from carebot.paths import data_dir
    return data_dir() / table[bench]


def load_turns(bench: str, path: Path, limit: int | None = None, max_turns: int | None = None) -> list[Turn]:
    """Every assistant turn of every dialogue, with its gold history. CMB-Clin: the case description opens
    the first question (as CMB-Clin's own evaluation does)."""
    if path.suffix == ".json":  # upstream CMB-test-qa.json: a list
        rows = json.loads(path.read_text(encoding="utf-8"))
    else:
        rows = _jsonl(path)
    turns: list[Turn] = []
    n = 0
    for i, d in enumerate(rows):
        if "messages" in d:
            msgs = d["messages"]
        elif "qa_pairs" in d or "QA_pairs" in d:
            qa = d.get("qa_pairs") or d.get("QA_pairs")
            msgs = []
            for j, p in enumerate(qa):
                q = f"{d.get('description', '')}\n\n{p['question']}" if j == 0 else p["question"]
                msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": p["answer"]}]
        else:
            raise InputError(f"{path}:{i + 1}: need 'messages' or 'qa_pairs'")
        if not any(m.get("role") == "assistant" for m in msgs):
            continue  # CMtMedQA's safety prompts have no reference answer to judge against
        n += 1
        if limit and n > limit:
            break
        t = 0
        for k, m in enumerate(msgs):
            if m["role"] == "assistant" and k > 0 and msgs[k - 1]["role"] == "user":
                t += 1
                if max_turns and t > max_turns:
                    break
                turns.append(Turn(dialogue=str(d.get("id", f"{bench}-{i}")), turn=t, history=msgs[:k - 1],
                                  question=msgs[k - 1]["content"], reference=m["content"]))
    if not turns:
        raise InputError(f"{path}: no judgeable turns for {bench}")
    return turns


# ----------------------------------------------------------------------------- strict parsing
def validate_scores(obj) -> dict:
    """Exactly the four dimensions, integers 1..5 (no floats, strings, bools); an optional 'reason' string."""
    if not isinstance(obj, dict):
        raise ValueError("expected a JSON object")
    extra = set(obj) - set(DIMS) - {"reason"}
    missing = set(DIMS) - set(obj)
    if missing or extra:
        raise ValueError(f"keys must be {list(DIMS)} (+ optional reason); missing {sorted(missing)}, extra {sorted(extra)}")
    for k in DIMS:
        v = obj[k]
        if type(v) is not int or not 1 <= v <= 5:
            raise ValueError(f"{k} must be an integer 1-5, got {v!r}")
    return {k: obj[k] for k in DIMS}


validate_scores.json_schema = {  # what a server's structured output can enforce; validate_scores still checks
    "type": "object", "required": list(DIMS), "additionalProperties": False,
    "properties": {**{k: {"type": "integer", "minimum": 1, "maximum": 5} for k in DIMS}, "reason": {"type": "string"}}}


def validate_winner(obj) -> str:
    if not isinstance(obj, dict) or set(obj) - {"winner", "reason"} or str(obj.get("winner")) not in ("1", "2", "tie"):
        raise ValueError('expected {"winner": "1" | "2" | "tie"}')
    return str(obj["winner"])


validate_winner.json_schema = {"type": "object", "required": ["winner"], "additionalProperties": False,
                               "properties": {"winner": {"type": "string", "enum": ["1", "2", "tie"]}, "reason": {"type": "string"}}}


def _dialogue_text(history: list[dict]) -> str:
    return "\n".join(f"{'患者' if m['role'] == 'user' else '医生'}：{m['content']}" for m in history) or "（无）"


# what a judge's answer needs: four scores and a short reason (Chinese: ~1.5 tokens a character); a winner. A
# reply that runs on is cut there and re-asked instead of costing the endpoint's default.
JUDGE_MAX_TOKENS = 256
PAIR_MAX_TOKENS = 64


def consult_request(bench: str, t: Turn, answer: str) -> Request:
    user = (f"【对话历史】\n{_dialogue_text(t.history)}\n\n【患者当前问题】\n{t.question}\n\n"
            f"【标准答案】\n{t.reference}\n\n【AI医生的回答】\n{answer}\n\n请按要求输出JSON评分。")
    return Request(id=f"{bench}/{t.dialogue}/{t.turn}", messages=[{"role": "system", "content": JUDGE_SYSTEM},
                                                                    {"role": "user", "content": user}],
                   params={"max_tokens": JUDGE_MAX_TOKENS})


def pair_request(qid: str, question: str, first: str, second: str, order: str) -> Request:
    user = f"【患者问题】\n{question}\n\n【回答1】\n{first}\n\n【回答2】\n{second}\n\n哪个回答更好？"
    return Request(id=f"{qid}/{order}", messages=[{"role": "system", "content": PAIR_SYSTEM}, {"role": "user", "content": user}],
                   params={"max_tokens": PAIR_MAX_TOKENS})


# ----------------------------------------------------------------------------- model answers (stored, resumable)
def model_answers(engine, turns: list[Turn], store: Path, cfg: JudgeConfig) -> dict[str, str]:
    """Answers keyed by 'dialogue/turn'; generated once, appended to `store` as they come."""
    done: dict[str, str] = {}
    if store.exists():
        for r in _jsonl(store):
            done[r["key"]] = r["answer"]
    todo = [t for t in turns if f"{t.dialogue}/{t.turn}" not in done]
    if todo:
        if engine is None:
            raise ConfigError(f"{store}: {len(todo)} turns have no stored answer and no --model was given")
        store.parent.mkdir(parents=True, exist_ok=True)
        bs = max(1, engine.cfg.batch_size) * 4
        for i in range(0, len(todo), bs):  # chunks: an interrupted run keeps what it generated
            chunk = todo[i:i + bs]
            convs = [t.history + [{"role": "user", "content": t.question}] for t in chunk]
            outs = engine.generate(convs, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                   seed=cfg.seed + i, chat=True, desc=store.parent.name)
            with open(store, "a", encoding="utf-8") as f:
                for t, a in zip(chunk, outs):
                    key = f"{t.dialogue}/{t.turn}"
                    done[key] = a.strip()
                    f.write(json.dumps({"key": key, "answer": a.strip()}, ensure_ascii=False) + "\n")
    return done


def aggregate(turns: list[Turn], scores: dict[str, dict | None]) -> dict:
    """Mean per dimension over judged turns, per turn index, and the failure count."""
    ok = [(t, scores[f"{t.dialogue}/{t.turn}"]) for t in turns if scores.get(f"{t.dialogue}/{t.turn}")]
    failed = sum(1 for t in turns if scores.get(f"{t.dialogue}/{t.turn}") is None)

    def block(pairs) -> dict:
        d = {k: statistics.fmean(s[k] for _, s in pairs) for k in DIMS}
        d["avg"] = statistics.fmean(d[k] for k in DIMS)
        d["n"] = len(pairs)
        return d

    per_turn = {}
    for n in sorted({t.turn for t, _ in ok}):
        per_turn[str(n)] = block([(t, s) for t, s in ok if t.turn == n])
    overall = block(ok) if ok else {k: None for k in (*DIMS, "avg")}
    return {"dims": {k: overall[k] for k in DIMS}, "avg": overall["avg"], "per_turn": per_turn,
            "n_turns": len(turns), "n_scored": len(ok), "n_failed": failed,
            "n_dialogues": len({t.dialogue for t in turns})}


def _merge_summary(out: Path, name: str, key: str, value: dict, stats: dict) -> dict:
    f = out / "judge_summary.json"
    doc = json.loads(f.read_text()) if f.exists() else {"model": name, "kind": "judge", "consult": {}}
    if key == "pairwise":
        doc["pairwise"] = value
    else:
        doc["consult"][key] = value
    doc.setdefault("llm_stats", {})[key] = stats
    write_text(f, json.dumps(doc, indent=2, ensure_ascii=False))
    return doc


def run_consult(cfg: JudgeConfig) -> dict:
    out = Path(cfg.out)
    name = cfg.name or (Path(cfg.engine.model).name if cfg.engine else out.name)
    if cfg.engine:
        check_contamination(cfg.engine.model, cfg.benchmarks, cfg.contamination, cfg.decontam_manifest)
    engine = None
    client = LLMClient(cfg.llm)
    doc = {}
    for bench in cfg.benchmarks:
        turns = load_turns(bench, _resolve(bench, cfg.paths), cfg.limit, cfg.max_turns)
        store = out / "consult" / bench / "answers.jsonl"
        have = {r["key"] for r in _jsonl(store)} if store.exists() else set()
        if engine is None and cfg.engine and any(f"{t.dialogue}/{t.turn}" not in have for t in turns):
            engine = build_engine(cfg.engine)
        answers = model_answers(engine, turns, store, cfg)
        reqs = [consult_request(bench, t, answers[f"{t.dialogue}/{t.turn}"]) for t in turns]
        before = client.stats.as_dict()
        results = client.map_json(reqs, validate=validate_scores, desc=f"judge {bench}")
        scores = {r.id.split("/", 1)[1]: (r.value if r.ok else None) for r in results}
        failures = [{"id": r.id, "error": r.error, "raw": r.raw} for r in results if not r.ok]
        write_text(out / "consult" / bench / "scores.jsonl",
                     "".join(json.dumps({"id": r.id, "ok": r.ok, "scores": r.value, "error": r.error}, ensure_ascii=False) + "\n"
                             for r in results))
        res = aggregate(turns, scores)
        res["failures"] = failures[:20]
        after = client.stats.as_dict()
        stats = {k: after[k] - before[k] for k in ("requests", "cache_hits", "answers", "failures", "reasks",
                                                   "first_valid", "after_reask")}
        stats["response_format"] = after["response_format"]
        # transport retries (429 / 5xx / timeouts / broken bodies) apart from judge-format re-asks
        stats["transport_retries"] = sum(after[k] - before[k] for k in after if k.startswith("retries_"))
        doc = _merge_summary(out, name, bench, res, stats)
    return doc


def run_pairwise(cfg: JudgeConfig, answers_b: dict[str, str] | None, name_b: str, engine_b: EngineConfig | None) -> dict:
    """Model A (cfg.engine) vs B (another model dir, an answers file, or the reference answers)."""
    out = Path(cfg.out)
    bench = cfg.benchmarks[0]
    rows = _jsonl(_resolve(bench, cfg.paths))[: cfg.limit or None]
    turns = [Turn(dialogue=str(r["id"]), turn=1, history=[], question=r["question"], reference=r.get("answer", "")) for r in rows]
    eng_a = build_engine(cfg.engine) if cfg.engine else None
    a = model_answers(eng_a, turns, out / "pairwise" / bench / "answers_a.jsonl", cfg)
    if answers_b is None:
        if engine_b is not None:
            b = model_answers(build_engine(engine_b), turns, out / "pairwise" / bench / "answers_b.jsonl", cfg)
        else:
            b = {f"{t.dialogue}/1": t.reference for t in turns}
    else:
        b = {f"{k}/1": v for k, v in answers_b.items()}
    reqs = []
    for t in turns:
        k = f"{t.dialogue}/1"
        if k not in b:
            raise InputError(f"model B has no answer for {t.dialogue}")
        reqs += [pair_request(t.dialogue, t.question, a[k], b[k], "ab"), pair_request(t.dialogue, t.question, b[k], a[k], "ba")]
    client = LLMClient(cfg.llm)
    res = {r.id: r for r in client.map_json(reqs, validate=validate_winner, desc=f"pairwise {bench}")}
    tally = {"win": 0, "tie": 0, "loss": 0, "failed": 0}
    for t in turns:
        ab, ba = res[f"{t.dialogue}/ab"], res[f"{t.dialogue}/ba"]
        if not (ab.ok and ba.ok):
            tally["failed"] += 1
            continue
        s = {"1": 1, "tie": 0, "2": -1}[ab.value] + {"2": 1, "tie": 0, "1": -1}[ba.value]  # +: A better
        tally["win" if s > 0 else "loss" if s < 0 else "tie"] += 1
    name = cfg.name or (Path(cfg.engine.model).name if cfg.engine else "A")
    value = {"a": name, "b": name_b, "bench": bench, "n": len(turns), **tally}
    doc = _merge_summary(out, name, "pairwise", value, client.stats.as_dict())
    return doc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="carebot eval judge", description=__doc__.split("\n")[0])
    ap.add_argument("task", choices=["consult", "pairwise"])
    add_engine_args(ap)
    ap.add_argument("--out", required=True)
    ap.add_argument("--name", default="")
    ap.add_argument("--benchmarks", default=None, help="consult: cmtmedqa,cmb_clin; pairwise: huatuo26m")
    ap.add_argument("--path", action="append", default=[], metavar="BENCH=PATH")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--max-turns", type=int, default=None)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--judge-base-url", default="https://api.openai.com/v1")
    ap.add_argument("--judge-model", default="gpt-4o")
    ap.add_argument("--judge-key-env", default="OPENAI_API_KEY", help="NAME of the env variable holding the key")
    ap.add_argument("--judge-concurrency", type=int, default=8)
    ap.add_argument("--judge-timeout", type=float, default=LLMConfig.timeout_s, help="seconds for one attempt")
    ap.add_argument("--judge-retries", type=int, default=2, help="re-asks after a malformed judge reply")
    ap.add_argument("--model-b", default=None, help="pairwise: model B directory")
    ap.add_argument("--answers-b", default=None, help="pairwise: model B answers, jsonl {id, answer}")
    ap.add_argument("--contamination", choices=["error", "warn", "off"], default="error")
    ap.add_argument("--decontam-manifest", default=None)
    ap.add_argument("--min-judged", type=float, default=0.5,
                    help="fail (exit 2, no average) when fewer turns than this share were judged")
    a = parse_command(ap, argv)
    llm = LLMConfig(base_url=a.judge_base_url, model=a.judge_model, api_key_env=a.judge_key_env,
                    concurrency=a.judge_concurrency, timeout_s=a.judge_timeout, parse_retries=a.judge_retries,
                    temperature=0.0,
                    cache_path=str(Path(a.out) / "judge_cache.sqlite"))
    benches = tuple(a.benchmarks.split(",")) if a.benchmarks else (("cmtmedqa", "cmb_clin") if a.task == "consult" else ("huatuo26m",))
    cfg = JudgeConfig(out=a.out, llm=llm, engine=engine_from_args(a), name=a.name, benchmarks=benches,
                      paths=dict(s.split("=", 1) for s in a.path), limit=a.limit, max_turns=a.max_turns,
                      max_new_tokens=a.max_new_tokens, temperature=a.temperature, seed=a.seed,
                      contamination=a.contamination, decontam_manifest=a.decontam_manifest, min_judged=a.min_judged)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    write_text(Path(a.out) / f"judge_{a.task}_config.json", json.dumps(dataclasses.asdict(cfg), indent=2, default=str))
    if a.task == "consult":
        doc = run_consult(cfg)
        short = []
        for b, r in doc["consult"].items():
            if r["n_scored"] < cfg.min_judged * r["n_turns"] or not r["n_scored"]:
                eg = (r.get("failures") or [{}])[0].get("error", "")
                short.append(f"{b}: {r['n_scored']} of {r['n_turns']} turns judged ({r['n_failed']} judge replies "
                             f"failed, e.g. {eg!r})")
            else:
                print(f"{b}: avg {r['avg']} over {r['n_scored']} of {r['n_turns']} turns judged "
                      f"({r['n_failed']} judge failures)")
        if short:
            raise CareBotError("; ".join(short) + f": below --min-judged {cfg.min_judged}, no average reported (the "
                               f"replies are in {Path(a.out) / 'consult'}/<bench>/scores.jsonl)")
    else:
        ans_b = {str(r["id"]): r["answer"] for r in _jsonl(Path(a.answers_b))} if a.answers_b else None
        eng_b = dataclasses.replace(cfg.engine, model=a.model_b) if a.model_b else None
        name_b = Path(a.model_b).name if a.model_b else (Path(a.answers_b).stem if a.answers_b else "reference")
        doc = run_pairwise(cfg, ans_b, name_b, eng_b)
        pw = doc["pairwise"]
        print(json.dumps(pw))
        if pw["n"] - pw["failed"] < cfg.min_judged * pw["n"] or pw["failed"] == pw["n"]:
            raise CareBotError(f"pairwise {pw['bench']}: {pw['n'] - pw['failed']} of {pw['n']} questions judged both "
                               f"ways: below --min-judged {cfg.min_judged}, no tally reported")
    return 0


if __name__ == "__main__":
    from carebot.cli import script

    script(main, "carebot eval judge")
