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

from carebot.io import write_json, write_text
from carebot.paths import data_dir
from launch.demo.context import Ctx
from launch.demo.curation_steps import (s_blend, s_bucket, s_corpus, s_datarater, s_decontam, s_dedup, s_domain,
                                        s_label, s_rules, s_sft_data, s_tokenize)
from launch.demo.model_steps import (s_boost, s_dpo, s_dpo_pairs, s_eval, s_export_base, s_export_final, s_sft,
                                     s_sft_select, s_stable)


STEPS: list[tuple[str, str, Callable[[Ctx], dict]]] = [
    ("corpus", "assemble a mixed zh/en, medical/general raw corpus from real data", s_corpus),
    ("rules", "bilingual rule filters + PII scrub", s_rules),
    ("label", "LLM labels, two rounds, keep consistent (local OpenAI-protocol server)", s_label),
    ("domain", "domain classifier: train on labels, apply to the corpus", s_domain),
    ("datarater", "DataRater: train on label scores, apply", s_datarater),
    ("decontam", "remove training docs overlapping any eval set (manifest for eval)", s_decontam),
    ("dedup", "MinHash near-duplicate removal", s_dedup),
    ("bucket", "{medical, general, medical_hq} x {zh, en} shards", s_bucket),
    ("sft_data", "medical dialogues for the Boost 'sft' bucket and SFT", s_sft_data),
    ("tokenize", "Megatron .bin/.idx per bucket + token manifests", s_tokenize),
    ("blend", "Stable (19:1, zh:en 1:9) and Boost (1:1, zh:en 4:6) weights", s_blend),
    ("stable", "Stable CPT (tiny LLaMA-3-shaped model, megatron-core, CPU)", s_stable),
    ("boost", "Boost CPT from the Stable checkpoint, new LR schedule", s_boost),
    ("hf_base", "export the Boost checkpoint to HuggingFace (LlamaForCausalLM)", s_export_base),
    ("sft_select", "SFT corpus: build, decontaminate, Deita selection (scored by our model)", s_sft_select),
    ("sft", "SFT, loss on assistant tokens only, best checkpoint kept", s_sft),
    ("dpo_pairs", "DPO pairs: objective (MCQ) + subjective (judge, both orders)", s_dpo_pairs),
    ("dpo", "DPO (sigmoid, precomputed reference log-probs)", s_dpo),
    ("hf_final", "export the DPO model to HuggingFace", s_export_final),
    ("eval", "MCQ (3 benchmarks, 3 seeds) base vs final, judged consultation, Table-1 report", s_eval),
]


def report(ctx: Ctx, timings: dict) -> Path:
    rows = "".join(f"| {i + 1} | {name} | {timings.get(name, 0):.1f} | "
                   f"{', '.join(f'{k}={v}' for k, v in ctx.counts.get(name, {}).items())} |\n"
                   for i, (name, _, _) in enumerate(STEPS))
    total = sum(timings.values())
    md = (f"# CareBot demo report\n\ndata: `{ctx.data}`; quick: {ctx.quick}; LLM endpoint: {ctx.base_url} "
          f"({'a local rule-based labeler / judge' if ctx.local_llm else 'as given'}); total {total / 60:.1f} min\n\n"
          "| # | step | seconds | outputs |\n|---|---|---|---|\n" + rows
          + f"\nEvaluation report (Table-1 layout, t-tests, plots): `{ctx.out / 'eval' / 'report' / 'report.md'}`\n")
    write_text(ctx.out / "report.md", md)
    write_json(ctx.out / "report.json", {"counts": ctx.counts, "seconds": timings})
    return ctx.out / "report.md"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="carebot demo", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/demo")
    ap.add_argument("--quick", action="store_true", help="fewer documents and steps (CI)")
    ap.add_argument("--base-url", default="", help="OpenAI-compatible endpoint (default: a local rule-based one)")
    ap.add_argument("--llm-model", default="gpt-4o", help="with --base-url: the model every LLM step asks")
    ap.add_argument("--fresh", action="store_true", help="delete OUT and start over (default: resume)")
    ap.add_argument("--tokenizer", choices=["bpe", "llama3"], default="bpe",
                    help="bpe: a 4k BPE trained on the corpus (fast); llama3: the real LLaMA-3 tokenizer")
    a = ap.parse_args(argv)
    ctx = Ctx(out=Path(a.out), data=data_dir(), quick=a.quick, tokenizer=a.tokenizer)
    if a.fresh and ctx.out.exists():
        shutil.rmtree(ctx.out)  # the tools' own resume markers would otherwise skip work too
    ctx.out.mkdir(parents=True, exist_ok=True)
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
