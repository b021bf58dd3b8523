"""`carebot data confilter`: ConFilter (CareBot paper, SFT section, eq. 1-3) for multi-turn dialogues.

For turn i with assistant reply t_i (N tokens):
  L(t_i|H) = mean NLL of t_i's tokens given the earlier turns H and the current user message   (eq. 1)
  L(t_i)   = mean NLL of t_i's tokens given the current user message only (`reply_only`: nothing)  (eq. 2)
  CF_i     = L(t_i|H) / L(t_i)                                                                   (eq. 3)
CF > 1: the history hurts (turns barely related); CF << 1: the history makes the reply predictable
(redundant, repeated context). A dialogue is kept when tau_low <= agg(CF_i) <= tau_high, agg = mean
(or max), over turns i >= 2 (turn 1 has no history: CF_1 = 1 by definition and would only dilute).
The paper gives no threshold values; tau_high = 1.0 follows its reading of CF > 1, tau_low = 0.5 is our
default, to be set from the histogram in the report.

Batching: because attention is causal, ONE sequence (the whole dialogue through the chat template) gives
L(t_i|H) for every turn at once; the T short "current user message + reply" sequences give the L(t_i).
The dialogue and its short sequences go into the same right-padded batch, so one forward pass yields
both scores of every turn. `score_dialogue_naive` recomputes each turn alone, for the equality test.
Reply tokens are the content tokens of the reply (not the template's end-of-turn token).
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from carebot.config import parse_command
from carebot.text import clip_for_tokens
from carebot.errors import InputError
from carebot.io import write_json, write_jsonl
from data_tools.sft.formats import Dialogue, read_sft, render_chat, sft_to_record
from data_tools.sft.scorer import Scorer, forward_logits, histogram_png, load_scorer, run_chunks, save_config


@dataclass(kw_only=True)
class ConFilterConfig:
    model: str = ""  # HF causal LM directory (the scorer; the paper uses its own model)
    reply_only: bool = False  # L(t_i) without the current user message
    tau_low: float = 0.5
    tau_high: float = 1.0
    agg: str = "mean"  # mean | max over turns >= 2
    max_len: int = 2048  # turns ending beyond this are not scored
    max_tokens: int = 8192  # padded tokens per forward pass
    chunk: int = 64  # dialogues per resumable chunk


# ----------------------------------------------------------------------------- sequences
def _template(sc: Scorer) -> Any:
    return sc.tokenizer if getattr(sc.tokenizer, "chat_template", None) else None


def _prefix_and_reply(sc: Scorer, chat: list[dict[str, str]], upto: int) -> tuple[list[int], list[int]]:
    """Ids of chat[:upto] + the assistant header (prefix), and ids of chat[upto]'s content (the reply)."""
    tpl = _template(sc)
    prefix = render_chat(chat[:upto], tpl, add_generation_prompt=True)
    return sc.encode(prefix), sc.encode(chat[upto]["content"].strip())


def dialogue_sequences(sc: Scorer, d: Dialogue, cfg: ConFilterConfig) -> tuple[list[int], list[tuple[int, int]], list[tuple[list[int], tuple[int, int]]]]:
    """(full ids, reply span per turn, [(short ids, reply span)] per turn). Spans index tokens [s, e).

    The full sequence is built from the same per-turn pieces as the naive path, so every reply token has
    exactly the context it has when the turn is scored alone."""
    tpl = _template(sc)
    sys = [{"role": "system", "content": d.system}] if d.system else []
    msgs = sys + d.messages
    ids: list[int] = []
    spans: list[tuple[int, int]] = []
    short: list[tuple[list[int], tuple[int, int]]] = []
    done_text = ""
    for k, m in enumerate(msgs):
        if m["role"] != "assistant" or k == 0 or msgs[k - 1]["role"] != "user":
            continue
        prefix = render_chat(msgs[:k], tpl, add_generation_prompt=True)
        if not prefix.startswith(done_text):
            raise ValueError("the chat template rewrites earlier turns; ConFilter needs a prefix-stable template")
        ids += sc.encode(prefix[len(done_text):])
        reply = sc.encode(m["content"].strip())
        spans.append((len(ids), len(ids) + len(reply)))
        ids += reply
        full = render_chat(msgs[: k + 1], tpl)
        tail = full[len(prefix):]
        content = m["content"].strip()
        if not tail.startswith(content):
            raise ValueError("chat template does not place the reply verbatim after the assistant header")
        ids += sc.encode(tail[len(content):])
        done_text = full
        ctx = sys + ([] if cfg.reply_only else [msgs[k - 1]])
        p_ids, r_ids = _prefix_and_reply(sc, ctx + [m], len(ctx))
        short.append((p_ids + r_ids, (len(p_ids), len(p_ids) + len(r_ids))))
    return ids, spans, short


def _span_nll(logits: Any, ids: list[int], span: tuple[int, int]) -> float:
    """Mean NLL of ids[s:e] from one row of logits (position j predicts token j+1)."""
    import torch

    s, e = span
    lp = torch.log_softmax(logits[s - 1 : e - 1].double(), dim=-1)
    tgt = torch.tensor(ids[s:e], device=lp.device)
    return float(-lp.gather(1, tgt[:, None]).mean())


def _agg(cf: list[float | None], how: str) -> float | None:
    vals = [c for c in cf[1:] if c is not None]  # turns >= 2
    if not vals:
        return None
    return max(vals) if how == "max" else sum(vals) / len(vals)


def _result(d: Dialogue, l_hist: list[float | None], l_dir: list[float | None], cfg: ConFilterConfig) -> dict[str, Any]:
    cf = [None if (h is None or g is None or g == 0) else h / g for h, g in zip(l_hist, l_dir)]
    agg = _agg(cf, cfg.agg)
    return {"id": d.id, "turns": len(cf), "l_hist": l_hist, "l_direct": l_dir, "cf": cf, "cf_agg": agg,
            "keep": agg is not None and cfg.tau_low <= agg <= cfg.tau_high}


def score_batch(sc: Scorer, dialogues: list[Dialogue], cfg: ConFilterConfig) -> list[dict[str, Any]]:
    """Batched: each dialogue's full sequence and its short sequences share one padded forward pass."""
    seqs = [dialogue_sequences(sc, d, cfg) for d in dialogues]
    # truncate: turns that end beyond max_len are not scored
    rows_of: list[list[int]] = []
    for ids, spans, short in seqs:
        ok = [i for i, (s, e) in enumerate(spans) if e <= cfg.max_len and short[i][1][1] <= cfg.max_len]
        rows_of.append(ok)
    order = sorted(range(len(dialogues)), key=lambda j: -min(len(seqs[j][0]), cfg.max_len))
    groups: list[list[int]] = []
    cur: list[int] = []
    for j in order:
        rows = 1 + len(rows_of[j])
        if cur and (sum(1 + len(rows_of[c]) for c in cur) + rows) * min(len(seqs[cur[0]][0]), cfg.max_len) > cfg.max_tokens:
            groups.append(cur)
            cur = []
        cur.append(j)
    if cur:
        groups.append(cur)
    out: list[dict[str, Any] | None] = [None] * len(dialogues)
    for g in groups:
        batch: list[list[int]] = []
        for j in g:
            ids, spans, short = seqs[j]
            batch.append(ids[: cfg.max_len])
            batch += [short[i][0] for i in rows_of[j]]
        logits = forward_logits(sc, batch) if any(rows_of[j] for j in g) else None
        r = 0
        for j in g:
            ids, spans, short = seqs[j]
            full_row = r
            r += 1
            l_hist: list[float | None] = [None] * len(spans)
            l_dir: list[float | None] = [None] * len(spans)
            for i in rows_of[j]:
                l_hist[i] = _span_nll(logits[full_row], ids, spans[i])
                l_dir[i] = _span_nll(logits[r], short[i][0], short[i][1])
                r += 1
            out[j] = _result(dialogues[j], l_hist, l_dir, cfg)
    return [o for o in out if o is not None]


def score_dialogue_naive(sc: Scorer, d: Dialogue, cfg: ConFilterConfig) -> dict[str, Any]:
    """Reference: every turn alone, one unpadded forward per score (slow; for tests)."""
    sys = [{"role": "system", "content": d.system}] if d.system else []
    msgs = sys + d.messages
    l_hist, l_dir = [], []
    for k, m in enumerate(msgs):
        if m["role"] != "assistant" or k == 0 or msgs[k - 1]["role"] != "user":
            continue
        ctx = sys + ([] if cfg.reply_only else [msgs[k - 1]])
        vals = []
        for chat, upto in ((msgs[: k + 1], k), (ctx + [m], len(ctx))):
            p, r = _prefix_and_reply(sc, chat, upto)
            vals.append(_span_nll(forward_logits(sc, [p + r])[0], p + r, (len(p), len(p) + len(r))) if len(p) + len(r) <= cfg.max_len else None)
        l_hist.append(vals[0])
        l_dir.append(vals[1])
    return _result(d, l_hist, l_dir, cfg)


# ----------------------------------------------------------------------------- run + report
def summarise(results: list[dict[str, Any]], cfg: ConFilterConfig) -> dict[str, Any]:
    aggs = [r["cf_agg"] for r in results if r["cf_agg"] is not None]
    turns = [c for r in results for c in r["cf"][1:] if c is not None]
    n_multi = len(aggs)
    kept = sum(r["keep"] for r in results)
    q = sorted(aggs)

    def pct(p: float) -> float | None:
        return q[min(len(q) - 1, int(p * len(q)))] if q else None

    return {
        "dialogues": len(results), "multi_turn_scored": n_multi, "kept": kept,
        "kept_frac_of_scored": kept / n_multi if n_multi else 0.0,
        "dropped_high_cf": sum(a > cfg.tau_high for a in aggs), "dropped_low_cf": sum(a < cfg.tau_low for a in aggs),
        "not_scored": len(results) - n_multi, "turns_scored": len(turns),
        "turn_cf_gt_1_frac": sum(c > 1 for c in turns) / len(turns) if turns else 0.0,
        "cf_agg_p10_p50_p90": [pct(0.1), pct(0.5), pct(0.9)],
        "tau_low": cfg.tau_low, "tau_high": cfg.tau_high, "agg": cfg.agg,
    }


def write_report(out: Path, results: list[dict[str, Any]], summary: dict[str, Any], cfg: ConFilterConfig) -> None:
    aggs = [r["cf_agg"] for r in results if r["cf_agg"] is not None]
    turns = [c for r in results for c in r["cf"][1:] if c is not None]
    histogram_png(out / "cf_hist.png", aggs, f"ConFilter: per-dialogue {cfg.agg} CF (n={len(aggs)})", "CF = L(t|H) / L(t)",
                  {"tau_low": cfg.tau_low, "tau_high": cfg.tau_high})
    histogram_png(out / "cf_turn_hist.png", turns, f"ConFilter: per-turn CF, turns >= 2 (n={len(turns)})", "CF", {"CF = 1": 1.0})
    s = summary
    (out / "report.md").write_text(
        f"# ConFilter\n\nScorer: `{cfg.model}`; L(t) {'reply only' if cfg.reply_only else 'given the current user message'}.\n\n"
        f"| | |\n|---|---|\n| dialogues | {s['dialogues']} |\n| multi-turn, scored | {s['multi_turn_scored']} |\n"
        f"| kept ({cfg.tau_low} <= {cfg.agg} CF <= {cfg.tau_high}) | {s['kept']} ({s['kept_frac_of_scored']:.1%}) |\n"
        f"| dropped, CF > tau_high (history hurts) | {s['dropped_high_cf']} |\n| dropped, CF < tau_low (redundant) | {s['dropped_low_cf']} |\n"
        f"| turns with CF > 1 | {s['turn_cf_gt_1_frac']:.1%} of {s['turns_scored']} |\n"
        f"| per-dialogue CF p10 / p50 / p90 | {' / '.join('-' if v is None else f'{v:.3f}' for v in s['cf_agg_p10_p50_p90'])} |\n\n"
        "![per-dialogue CF](cf_hist.png)\n\n![per-turn CF](cf_turn_hist.png)\n", encoding="utf-8")


def run(dialogues: list[Dialogue], out: Path, cfg: ConFilterConfig, sc: Scorer | None = None, progress: bool = True) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    sc = sc or load_scorer(cfg.model)
    def clipped(d: Dialogue) -> Dialogue:  # text past max_len tokens is never scored: cut it before tokenizing
        return dataclasses.replace(d, messages=[{**m, "content": clip_for_tokens(m["content"], cfg.max_len)} for m in d.messages])

    results = run_chunks(dialogues, out, cfg.chunk, lambda ds: score_batch(sc, [clipped(d) for d in ds], cfg), "confilter",
                         progress)
    write_jsonl(out / "scores.jsonl", results)
    kept = []
    for d, r in zip(dialogues, results):
        if r["keep"]:
            rec = sft_to_record(d, "openai")
            rec["confilter_cf"] = r["cf_agg"]
            kept.append(rec)
    write_jsonl(out / "selected.jsonl", kept)
    summary = summarise(results, cfg)
    write_json(out / "summary.json", summary)
    write_report(out, results, summary, cfg)
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="carebot data confilter", description=__doc__.split("\n")[0])
    ap.add_argument("--input", required=True, help="SFT dialogues jsonl (OpenAI messages or NeMo conversations)")
    ap.add_argument("--model", required=True, help="HF causal LM directory used as the scorer")
    ap.add_argument("--out", required=True)
    ap.add_argument("--tau-low", type=float, default=0.5)
    ap.add_argument("--tau-high", type=float, default=1.0)
    ap.add_argument("--agg", choices=("mean", "max"), default="mean")
    ap.add_argument("--reply-only", action="store_true", help="L(t_i) on the reply alone (no user message)")
    ap.add_argument("--max-len", type=int, default=2048)
    ap.add_argument("--max-tokens", type=int, default=8192, help="padded tokens per forward pass")
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--allow-empty", action="store_true", help="an input with no records is not an error")
    a = parse_command(ap, argv)
    if a.agg not in ("mean", "max") or not (a.tau_low <= a.tau_high):
        raise InputError("need tau_low <= tau_high")
    cfg = ConFilterConfig(model=a.model, reply_only=a.reply_only, tau_low=a.tau_low, tau_high=a.tau_high, agg=a.agg,
                          max_len=a.max_len, max_tokens=a.max_tokens, chunk=a.chunk)
    ds = read_sft(a.input, allow_empty=a.allow_empty)[: a.limit]  # bad input stops here, before any output exists
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(out, cfg)
    s = run(ds, out, cfg, progress=not a.no_progress)
    print(f"kept {s['kept']} / {s['multi_turn_scored']} multi-turn dialogues; report: {out / 'report.md'}")
    return 0


if __name__ == "__main__":
    from carebot.cli import script

    script(main, "carebot data confilter")
