"""Held-out loss of an HF model (`carebot eval loss`): how well it predicts text it never trained on.

Two numbers, both token-weighted mean negative log-likelihoods (nats per token):
- `text_nll`: each record as plain text (a `text` field, or a dialogue's turns joined by newlines), tokenized as
  the model's tokenizer does by default (its BOS policy) -- what continued pre-training optimises;
- `reply_nll`: for a dialogue (`messages`, OpenAI style), the assistant replies and their end-of-turn token
  given the chat-templated history -- exactly the tokens SFT trains on (`alignment.chat_data`).
Comparing a model before and after a stage on the same held-out file shows what the stage did; the demo does
that after each of CPT and SFT. Writes `OUT/loss.json` (+ per-record `OUT/loss_items.jsonl`).
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from carebot.config import parse_command
from carebot.errors import InputError
from carebot.io import read_jsonl, write_json, write_jsonl


def _records(path: str, limit: int | None) -> list[dict[str, Any]]:
    recs = list(read_jsonl(path, limit=limit))
    if not recs:
        raise InputError(f"{path}: no records")
    for i, r in enumerate(recs):
        if not isinstance(r.get("messages"), list) and not isinstance(r.get("text"), str):
            raise InputError(f"{path}: record {i + 1} has neither a 'text' string nor a 'messages' list")
    return recs


def _nll_sum(model: Any, ids: list[int], mask: list[bool]) -> tuple[float, int]:
    """(sum of -log p, count) over the tokens ids[t] with mask[t] (t >= 1: the first token is never predicted)."""
    import torch

    if len(ids) < 2 or not any(mask[1:]):
        return 0.0, 0
    dev = next(model.parameters()).device
    x = torch.tensor([ids], device=dev)
    with torch.inference_mode():
        logits = model(input_ids=x).logits[0, :-1].float()
    lp = torch.log_softmax(logits, dim=-1).gather(1, x[0, 1:, None])[:, 0]
    m = torch.tensor(mask[1:], device=dev)
    return float(-lp[m].double().sum()), int(m.sum())


def heldout_loss(model_dir: str, recs: list[dict[str, Any]], max_tokens: int = 1024, chat_template: str | None = None,
                 progress: bool = True) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from tqdm.auto import tqdm

    from alignment.chat_data import render_dialogue, use_chat_template
    from data_tools.sft.scorer import load_scorer

    sc = load_scorer(model_dir)  # fp32, local files only; not an HF model dir: one line
    p, tok = Path(model_dir), sc.tokenizer
    dialogues = any(isinstance(r.get("messages"), list) for r in recs)
    template = use_chat_template(tok, chat_template, str(p)) if dialogues else None
    tot = {"text": [0.0, 0], "reply": [0.0, 0]}
    items = []
    for r in tqdm(recs, desc="held-out loss", disable=not progress):
        msgs = r.get("messages") if isinstance(r.get("messages"), list) else None
        text = "\n".join(str(m.get("content", "")).strip() for m in msgs) if msgs else r["text"]
        ids = tok(text)["input_ids"][:max_tokens]
        parts = {"text": (ids, [True] * len(ids))}
        if msgs:
            rids, rmask = render_dialogue(tok, msgs)
            parts["reply"] = (rids[:max_tokens], rmask[:max_tokens])
        item = {"id": r.get("id"), "text_nll": None, "reply_nll": None}
        for k, (seq, mask) in parts.items():
            s, n = _nll_sum(sc.model, seq, mask)
            tot[k][0] += s
            tot[k][1] += n
            item[f"{k}_nll"] = s / n if n else None
        items.append(item)
    out: dict[str, Any] = {"model": str(p), "records": len(recs), "max_tokens": max_tokens, "chat_template": template}
    for k, (s, n) in tot.items():
        out[f"{k}_nll"] = s / n if n else None
        out[f"{k}_ppl"] = math.exp(s / n) if n else None
        out[f"{k}_tokens"] = n
    return out, items


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="carebot eval loss", description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="HF causal LM directory")
    ap.add_argument("--input", required=True, help="held-out jsonl: records with 'text' and/or 'messages'")
    ap.add_argument("--out", required=True)
    ap.add_argument("--max-tokens", type=int, default=1024, help="tokens scored per record (the rest is cut)")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--chat-template", default=None,
                    help="llama3 | chatml | FILE.jinja for a tokenizer without one (default: the tokenizer's own)")
    ap.add_argument("--no-progress", action="store_true")
    a = parse_command(ap, argv)
    recs = _records(a.input, a.limit)  # bad input stops here, before any output exists
    res, items = heldout_loss(a.model, recs, a.max_tokens, a.chat_template, progress=not a.no_progress)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "loss_items.jsonl", items)
    write_json(out / "loss.json", res)
    fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
    print(f"{a.model}: text nll {fmt(res['text_nll'])} ({res['text_tokens']} tokens), "
          f"reply nll {fmt(res['reply_nll'])} ({res['reply_tokens']} tokens); wrote {out / 'loss.json'}")
    return 0


if __name__ == "__main__":
    from carebot.cli import script

    script(main, "carebot eval loss")
