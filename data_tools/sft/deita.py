"""`carebot data deita`: Deita complexity x quality scores for SFT selection (CareBot paper, SFT section).

Deita (Liu et al. 2024) asks a scorer LM a fixed prompt and reads the first generated position: the score is
the expectation sum_k k * p_k over the softmax of the logits of the tokens "1".."6" at that position
(no sampling). c_i scores the user query, q_i the reply given the query; s_i = c_i * q_i. A multi-turn
dialogue is scored turn by turn (query = that turn's user message, as Deita does) and s = mean_i s_i.
Selection keeps s >= threshold, or the top fraction (`top_frac`), as the paper sets "a score threshold".

Any HF causal LM directory works as scorer (Deita's own scorers are hkust-nlp/deita-{complexity,quality}-scorer;
on CPU tests, a tiny model). If a digit is not a single token of the scorer's tokenizer, its first token is
used and the summary says so. Batches are left-padded with explicit position ids and only the last
position's logits are computed, so a batch equals one-at-a-time scoring (`score_prompt_naive`).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from carebot.config import parse_command
from carebot.text import clip_for_tokens
from carebot.errors import InputError
from carebot.io import write_json, write_jsonl
from data_tools.sft.formats import Dialogue, read_sft, sft_to_record
from data_tools.sft.scorer import Scorer, histogram_png, load_scorer, pad_id_of, run_chunks, save_config, token_budget_batches

# Deita's prompts, verbatim (whitespace included): the scorers were trained on exactly these strings.
COMPLEXITY_PROMPT = ("You are a helpful assistant. Please identify the complexity score of the following user query. \n"
                     "##Query: {instruction}  \n##Complexity: ")
QUALITY_PROMPT = ("You are a helpful assistant. Please identify the quality score of the Response corresponding to the "
                  "Question. \n #Question#:\n{instruction}\n#Response#:\n{output} \n##Quality: ")
DIGITS = ("1", "2", "3", "4", "5", "6")


@dataclass(kw_only=True)
class DeitaConfig:
    complexity_model: str = ""
    quality_model: str = ""  # empty: the complexity model scores quality too
    max_len: int = 2048  # prompt tokens; longer prompts keep their head and the "##...: " tail
    max_tokens: int = 16384  # padded tokens per forward pass
    threshold: float | None = None  # keep s >= threshold ...
    top_frac: float | None = None  # ... or the best fraction (Deita's own selection is top-k)
    chunk: int = 256


def digit_ids(tokenizer: Any) -> tuple[list[int], bool]:
    """Token ids of "1".."6"; (ids, all single tokens?)."""
    ids, single = [], True
    for d in DIGITS:
        t = tokenizer(d, add_special_tokens=False)["input_ids"]
        single &= len(t) == 1
        ids.append(t[0])
    if len(set(ids)) != 6:
        raise InputError("scorer tokenizer maps two of the digits 1-6 to the same first token; cannot score")
    return ids, single


def encode_prompt(sc: Scorer, prompt: str, max_len: int) -> list[int]:
    """Prompt ids as Deita encodes them (tokenizer default specials: BOS for LLaMA); too long -> head + tail."""
    head = clip_for_tokens(prompt, max_len)  # a huge prompt is cut before tokenizing: only its head is kept
    ids = sc.tokenizer(head)["input_ids"]
    if len(ids) <= max_len and head == prompt:
        return ids
    tail = sc.tokenizer(prompt[prompt.rindex("\n"):], add_special_tokens=False)["input_ids"]
    return ids[: max_len - len(tail)] + tail


def _expectation(logits_digits: Any) -> list[float]:
    import torch

    p = torch.softmax(logits_digits.double(), dim=-1)
    return (p @ torch.arange(1, 7, dtype=torch.float64, device=p.device)).tolist()


def score_prompts(sc: Scorer, prompts: list[str], cfg: DeitaConfig) -> list[float]:
    """Batched Deita scores of already-filled prompts."""
    import torch

    dig, _ = digit_ids(sc.tokenizer)
    seqs = [encode_prompt(sc, p, cfg.max_len) for p in prompts]
    out = [0.0] * len(seqs)
    pad = pad_id_of(sc.tokenizer)
    for group in token_budget_batches([len(s) for s in seqs], cfg.max_tokens):
        L = max(len(seqs[i]) for i in group)
        ids = torch.full((len(group), L), pad, dtype=torch.long)
        mask = torch.zeros((len(group), L), dtype=torch.long)
        for r, i in enumerate(group):  # left padding: the last position is every row's next-token position
            ids[r, L - len(seqs[i]):] = torch.tensor(seqs[i])
            mask[r, L - len(seqs[i]):] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)  # positions as if unpadded
        with torch.inference_mode():
            logits = sc.model(input_ids=ids.to(sc.device), attention_mask=mask.to(sc.device),
                              position_ids=pos.to(sc.device), logits_to_keep=1).logits[:, -1].float()
        for r, v in zip(group, _expectation(logits[:, dig])):
            out[r] = v
    return out


def score_prompt_naive(sc: Scorer, prompt: str, cfg: DeitaConfig) -> float:
    """Reference: one unpadded forward, full logits, last position (for tests)."""
    import torch

    dig, _ = digit_ids(sc.tokenizer)
    ids = torch.tensor([encode_prompt(sc, prompt, cfg.max_len)], device=sc.device)
    with torch.inference_mode():
        logits = sc.model(input_ids=ids).logits[0, -1].float()
    return _expectation(logits[dig][None])[0]


def score_dialogues(cscorer: Scorer, qscorer: Scorer, dialogues: list[Dialogue], cfg: DeitaConfig) -> list[dict[str, Any]]:
    """Per turn c, q, s = c*q; per dialogue s = mean over turns (all turns of the chunk in one batched pass)."""
    turns = [(j, u, a) for j, d in enumerate(dialogues) for u, a in d.turns()]
    c = score_prompts(cscorer, [COMPLEXITY_PROMPT.format(instruction=u) for _, u, _ in turns], cfg)
    q = score_prompts(qscorer, [QUALITY_PROMPT.format(instruction=u, output=a) for _, u, a in turns], cfg)
    per: list[list[tuple[float, float]]] = [[] for _ in dialogues]
    for (j, _, _), ci, qi in zip(turns, c, q):
        per[j].append((ci, qi))
    out = []
    for d, cq in zip(dialogues, per):
        s = [ci * qi for ci, qi in cq]
        out.append({"id": d.id, "turns": len(cq), "complexity": [ci for ci, _ in cq], "quality": [qi for _, qi in cq],
                    "s_turns": s, "score": sum(s) / len(s) if s else None})
    return out


def select(results: list[dict[str, Any]], threshold: float | None = None, top_frac: float | None = None) -> tuple[list[bool], float | None]:
    """Keep flags and the threshold applied. top_frac keeps exactly round(top_frac * n_scored) items
    (ties broken by input order); threshold keeps score >= threshold."""
    scored = [i for i, r in enumerate(results) if r["score"] is not None]
    if top_frac is not None:
        k = round(top_frac * len(scored))
        best = sorted(scored, key=lambda i: (-results[i]["score"], i))[:k]
        keep = set(best)
        thr = min((results[i]["score"] for i in best), default=None)
        return [i in keep for i in range(len(results))], thr
    if threshold is None:
        return [results[i]["score"] is not None for i in range(len(results))], None
    return [r["score"] is not None and r["score"] >= threshold for r in results], threshold


def run(dialogues: list[Dialogue], out: Path, cfg: DeitaConfig, scorers: tuple[Scorer, Scorer] | None = None,
        progress: bool = True) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    if scorers is None:
        cs = load_scorer(cfg.complexity_model)
        qs = load_scorer(cfg.quality_model) if cfg.quality_model and cfg.quality_model != cfg.complexity_model else cs
        scorers = (cs, qs)
    cs, qs = scorers
    results = run_chunks(dialogues, out, cfg.chunk, lambda ds: score_dialogues(cs, qs, ds, cfg), "deita", progress)
    keep, thr = select(results, cfg.threshold, cfg.top_frac)
    for r, k in zip(results, keep):
        r["keep"] = k
    write_jsonl(out / "scores.jsonl", results)
    write_jsonl(out / "selected.jsonl", ({**sft_to_record(d, "openai"), "deita_score": r["score"]}
                                         for d, r in zip(dialogues, results) if r["keep"]))
    scores = [r["score"] for r in results if r["score"] is not None]
    summary = {"dialogues": len(results), "scored": len(scores), "kept": sum(keep),
               "kept_frac": sum(keep) / len(scores) if scores else 0.0, "threshold": thr, "top_frac": cfg.top_frac,
               "digits_single_token": {"complexity": digit_ids(cs.tokenizer)[1], "quality": digit_ids(qs.tokenizer)[1]},
               "mean_score": sum(scores) / len(scores) if scores else None}
    write_json(out / "summary.json", summary)
    histogram_png(out / "deita_hist.png", scores, f"Deita s = c x q (n={len(scores)})", "s", {"threshold": thr} if thr is not None else None)
    (out / "report.md").write_text(
        f"# Deita\n\nScorers: complexity `{cfg.complexity_model}`, quality `{cfg.quality_model or cfg.complexity_model}`.\n\n"
        f"Kept {summary['kept']} of {summary['scored']} scored ({summary['kept_frac']:.1%})"
        f"{'' if thr is None else f' at s >= {thr:.4g}'}.\n\n![Deita scores](deita_hist.png)\n", encoding="utf-8")
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="carebot data deita", description=__doc__.split("\n")[0])
    ap.add_argument("--input", required=True, help="SFT dialogues jsonl (OpenAI messages or NeMo conversations)")
    ap.add_argument("--complexity-model", required=True)
    ap.add_argument("--quality-model", default="", help="default: the complexity model")
    ap.add_argument("--out", required=True)
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--threshold", type=float, default=None)
    g.add_argument("--top-frac", type=float, default=None)
    ap.add_argument("--max-len", type=int, default=2048)
    ap.add_argument("--max-tokens", type=int, default=16384)
    ap.add_argument("--chunk", type=int, default=256)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--allow-empty", action="store_true", help="an input with no records is not an error")
    a = parse_command(ap, argv)
    if a.top_frac is not None and not 0 <= a.top_frac <= 1:
        raise InputError("--top-frac must be in [0, 1]")
    cfg = DeitaConfig(complexity_model=a.complexity_model, quality_model=a.quality_model, max_len=a.max_len,
                      max_tokens=a.max_tokens, threshold=a.threshold, top_frac=a.top_frac, chunk=a.chunk)
    ds = read_sft(a.input, allow_empty=a.allow_empty)[: a.limit]  # bad input stops here, before any output exists
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(out, cfg)
    s = run(ds, out, cfg, progress=not a.no_progress)
    print(f"kept {s['kept']} / {s['scored']} ({s['kept_frac']:.1%}); report: {out / 'report.md'}")
    return 0


if __name__ == "__main__":
    from carebot.cli import script

    script(main, "carebot data deita")
