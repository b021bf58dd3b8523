"""The demo's model steps: Stable and Boost CPT, HF export, SFT data selection, SFT, DPO pairs, DPO, held-out
loss, eval. Two kinds of run: the tiny twin recipes from random init (default), or `--base-model`: the paper's
own recipes from a real HF checkpoint (its architecture and tokenizer read from it, no `model.*` written
here), cut to what a CPU runs in minutes (REAL_CPU, REAL_STEPS, REAL_LR)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from launch.demo.context import Ctx, carebot, jl, llm_counts, tokenizer_dir, write_jl
from launch.pipeline import PIPELINE, STAGES, checkpoint_dir, plan

# --base-model: the paper recipe's layout and batch cut to one CPU process; nothing about the model itself
REAL_CPU = ["parallel.tensor=1", "parallel.pipeline=1", "parallel.distributed_optimizer=false", "parallel.recompute=none",
            "data.seq_length=256", "train.micro_batch_size=2", "train.global_batch_size=4"]
# steps (quick, full) and peak lr. SmolLM2-135M trains at ~100 tokens/s on 2 cores (fp32, ~0.09 TFLOP/s), so a
# quick step is 1k tokens (~10 s). The paper's lr (8e-6 / 2e-6 / 2e-6 / 1e-7) over 18k / 7k / 2 epochs of 4M-token
# batches moves a model far more than a few dozen 1k-token steps do at it: the demo's lr is higher.
REAL_STEPS = {"stable": (10, 60), "boost": (6, 30), "sft": (12, 60), "dpo": (4, 20)}
REAL_LR = {"stable": 5e-5, "boost": 2e-5, "sft": 5e-5, "dpo": 1e-6}
# sft.yaml's dropout 0.1 (the paper's, for LLaMA-3-8B) wrecks a model pretrained without residual dropout: SmolLM2's
# step-1 SFT loss is 7.12 at hidden_dropout 0.1 vs 2.39 at 0 (val loss 2.38); plain transformers with dropout 0.1
# on the residual branches gives 7.9 vs 3.5. Not an architecture key: the demo sets it, for a base model only.
REAL_SFT = ["model.hidden_dropout=0.0", "train.eval_iters=4"]
TINY_STEPS = {"stable": (30, 120), "boost": (30, 120), "sft": (20, 60), "dpo": (10, 30)}


def _steps(ctx: Ctx, stage: str) -> int:
    return (REAL_STEPS if ctx.base_model else TINY_STEPS)[stage][0 if ctx.quick else 1]


def _cpt_overrides(ctx: Ctx, name: str) -> list[str]:
    steps = _steps(ctx, name)
    return [f"output_dir={ctx.out / name}", f"data.tokenizer={tokenizer_dir(ctx)}", f"train.train_steps={steps}",
            f"checkpoint.save_interval={steps}", "train.eval_interval=0", f"train.log_interval={2 if ctx.base_model else 10}",
            "data.split=100,0,0"]  # no CPT eval here; a small bucket cannot spare a 1% valid split


def _last(path: Path) -> dict:
    return json.loads((path / "metrics.jsonl").read_text().splitlines()[-1])


# the model stages follow the one stage graph (launch.pipeline), with each training stage's CPU twin recipe
_PLAN = plan(PIPELINE)
_TRAIN = {s.stage: s for s in _PLAN if s.spec.trains}
_CONVERTS = [PIPELINE[s.source] for s in _PLAN if s.stage == "convert"]  # the training stages exported to HF


def _recipe(ctx: Ctx, stage: str) -> list[str]:
    """`--config RECIPE` and what the demo changes in it: the tiny twin as it is, or the paper's recipe on CPU."""
    if not ctx.base_model:
        return ["--config", STAGES[stage].tiny_recipe]
    return ["--config", STAGES[stage].recipe, *REAL_CPU, f"optim.lr={REAL_LR[stage]}", f"optim.min_lr={REAL_LR[stage] / 10}",
            f"data.cache_dir={ctx.out / stage / 'index_cache'}"]


def _init_from(ctx: Ctx, stage: str) -> list[str]:
    """`checkpoint.init_from=` the checkpoint of the stage this one starts from (its best one if it kept one);
    the first stage starts from the base model when there is one."""
    src = _TRAIN[stage].source
    if src is None:
        return [f"checkpoint.init_from={ctx.base_model}"] if ctx.base_model else []
    run = ctx.out / PIPELINE[src]
    return [f"checkpoint.init_from={checkpoint_dir(run, (run / 'best' / 'latest').exists())}"]


def _chat(ctx: Ctx) -> list[str]:
    return [f"stage_args.chat_template={ctx.chat_template}"] if ctx.chat_template else []


def s_stable(ctx: Ctx) -> dict:
    carebot(ctx, "stable", "pretrain", *_recipe(ctx, "stable"), str(ctx.out / "blend" / "stable.yaml"),
            *_cpt_overrides(ctx, "stable"), *_init_from(ctx, "stable"))
    first = json.loads((ctx.out / "stable" / "metrics.jsonl").read_text().splitlines()[0])
    last = _last(ctx.out / "stable")
    return {"steps": last["step"], "loss_first": round(first["loss"], 3), "loss_last": round(last["loss"], 3),
            "tokens_per_s": round(last["tokens_per_s"])}


def s_boost(ctx: Ctx) -> dict:
    carebot(ctx, "boost", "pretrain", *_recipe(ctx, "boost"), str(ctx.out / "blend" / "boost.yaml"),
            *_cpt_overrides(ctx, "boost"), *_init_from(ctx, "boost"))
    last = _last(ctx.out / "boost")
    return {"steps": last["step"], "loss_last": round(last["loss"], 3)}


def s_export_base(ctx: Ctx) -> dict:
    return _export(ctx, ctx.out / _CONVERTS[0], "hf_base")


def _export(ctx: Ctx, run: Path, name: str) -> dict:
    """Megatron checkpoint -> HF LlamaForCausalLM dir, with the decontamination manifest eval reads."""
    src = run / "best" if (run / "best" / "latest").exists() else run / "checkpoints"
    carebot(ctx, f"convert_{name}", "convert", "megatron-to-hf", "--megatron", str(src), "--out", str(ctx.out / name),
            "--config", str(run / "config.yaml"), "--tokenizer", str(tokenizer_dir(ctx)))
    shutil.copy(ctx.out / "curate" / "decontam_manifest.json", ctx.out / name / "decontam_manifest.json")
    cfg = json.loads((ctx.out / name / "config.json").read_text())
    return {"hf_dir": str(ctx.out / name), "layers": cfg["num_hidden_layers"], "hidden": cfg["hidden_size"],
            "vocab": cfg["vocab_size"]}


def s_sft_select(ctx: Ctx) -> dict:
    """SFT corpus: merge + clean + decontaminate, then Deita complexity x quality scored by our own model."""
    carebot(ctx, "sft_select", "data", "sft-build", "--input", *map(str, (ctx.out / "sft_data").glob("sft_*.jsonl")),
            "--out", str(ctx.d("sft_select") / "build"), "--base-url", ctx.base_url, "--model", ctx.models["doctor"],
            "--no-progress")
    built = ctx.out / "sft_select" / "build" / "sft.jsonl"
    carebot(ctx, "sft_select", "data", "deita", "--input", str(built), "--complexity-model", str(ctx.out / "hf_base"),
            "--out", str(ctx.d("sft_select") / "deita"), "--top-frac", "0.7", "--no-progress",
            *(["--max-len", "256"] if ctx.base_model else []))  # a real model scores ~300 prompt tokens/s on 2 cores
    sel = ctx.out / "sft_select" / "deita" / "selected.jsonl"
    return {"built": len(jl(built)), "selected": len(jl(sel)), "selected_file": str(sel)}


def s_sft(ctx: Ctx) -> dict:
    sel = ctx.counts["sft_select"]["selected_file"]
    steps = _steps(ctx, "sft")
    carebot(ctx, "sft", "sft", *_recipe(ctx, "sft"), *_chat(ctx), *(REAL_SFT if ctx.base_model else []), f"output_dir={ctx.out / 'sft'}",
            f"data.tokenizer={tokenizer_dir(ctx)}", f"data.data_path=[{sel}]", "train.epochs=null",
            f"train.train_steps={steps}", "train.eval_interval=10", "stage_args.max_dialogues=null",
            *_init_from(ctx, "sft"), f"checkpoint.save_interval={steps}")
    m = [json.loads(x) for x in (ctx.out / "sft" / "metrics.jsonl").read_text().splitlines()]
    vals = [r["val_loss"] for r in m if "val_loss" in r]
    return {"steps": m[-1]["step"], "val_loss_first": round(vals[0], 3), "val_loss_best": round(min(vals), 3)}


def s_dpo_pairs(ctx: Ctx) -> dict:
    # objective pairs from MCQ (MedMCQA here; the demo's eval leaves MedMCQA out), subjective via the judge
    mcq = write_jl(ctx.d("dpo_pairs") / "mcq_subset.jsonl",
                   jl(ctx.data / "benchmarks" / "medmcqa_dev.jsonl")[: 60 if ctx.quick else 200])
    carebot(ctx, "dpo_pairs", "data", "dpo-pairs", "--mcq", str(mcq), "--sft", ctx.counts["sft_select"]["selected_file"],
            "--n-subjective", str(ctx.llm_items("dpo_subjective")), "--base-url", ctx.base_url,
            "--model", ctx.models["doctor"], *ctx.llm_args(), "--out", str(ctx.d("dpo_pairs")), "--no-progress")
    f = ctx.out / "dpo_pairs" / "summary.json"
    s = json.loads(f.read_text()) if f.exists() else {}
    pairs = ctx.out / "dpo_pairs" / "pairs.jsonl"
    return {"pairs": len(jl(pairs)), **{k: v for k, v in s.items() if isinstance(v, int) and k != "seed"},
            **(llm_counts(s["llm"]) if "llm" in s else {}), "pairs_file": str(pairs)}


def s_dpo(ctx: Ctx) -> dict:
    # lr 1e-4 (tiny_dpo's 1e-3 is for tests that overfit a few pairs): measured on the full demo's 40 held-out
    # pairs, 1e-3 ends at val margin +0.004-0.04 after going negative, 1e-4 rises steadily to +0.02 (acc 0.65)
    steps, pairs = _steps(ctx, "dpo"), (32 if ctx.base_model else 64) if ctx.quick else 200
    valid = int(pairs * 0.2)
    lr = [] if ctx.base_model else ["optim.lr=1e-4", "optim.min_lr=1e-5"]
    carebot(ctx, "dpo", "dpo", *_recipe(ctx, "dpo"), *_chat(ctx), *lr, f"output_dir={ctx.out / 'dpo'}",
            f"data.tokenizer={tokenizer_dir(ctx)}", f"data.data_path=[{ctx.counts['dpo_pairs']['pairs_file']}]",
            f"train.train_steps={steps}", "train.epochs=null", f"stage_args.max_pairs={pairs}",
            "train.micro_batch_size=2", "train.global_batch_size=4",
            "stage_args.valid_fraction=0.2", f"train.eval_interval={max(1, steps // (2 if ctx.base_model else 3))}",
            f"train.eval_iters={valid // 4}",
            *_init_from(ctx, "dpo"), f"checkpoint.save_interval={steps}")
    m = [json.loads(x) for x in (ctx.out / "dpo" / "metrics.jsonl").read_text().splitlines()]
    ev = [r for r in m if "val_loss" in r]
    # the held-out pairs: at step 0 the policy is the reference (loss ln 2, margin 0)
    return {"steps": m[-1]["step"], "valid_pairs": valid // 4 * 4, "train_loss_first": round(m[0]["loss"], 4),
            **{f"val_{k}_step{r['step']}": round(r[f"val_{k}"], 4) for r in (ev[0], ev[-1])
               for k in ("loss", "reward_margin", "reward_accuracy")}}


def s_export_final(ctx: Ctx) -> dict:
    return _export(ctx, ctx.out / _CONVERTS[1], "hf_final")


def s_heldout(ctx: Ctx) -> dict:
    """Held-out medical loss (`carebot eval loss`) of the base model (with --base-model), after CPT (hf_base) and
    after SFT (exported here). DPO's held-out loss is SFT's to 4 decimals at the demo's lr: not measured."""
    _export(ctx, ctx.out / "sft", "hf_sft")
    models = ([("base", ctx.base_model)] if ctx.base_model else []) + [
        ("cpt", ctx.out / "hf_base"), ("sft", ctx.out / "hf_sft")]
    res = {}
    for name, model in models:
        out = ctx.d("heldout") / name
        carebot(ctx, "heldout", "eval", "loss", "--model", str(model), "--input",
                str(ctx.out / "sft_data" / "heldout_medical.jsonl"), "--out", str(out), "--max-tokens", "256",
                "--no-progress", *(["--chat-template", ctx.chat_template] if ctx.chat_template else []))
        r = json.loads((out / "loss.json").read_text())
        res[f"text_nll_{name}"], res[f"reply_nll_{name}"] = round(r["text_nll"], 4), round(r["reply_nll"], 4)
    return {"records": r["records"], **res}


def s_eval(ctx: Ctx) -> dict:
    """MCQ accuracy of the starting model vs the final one (the base model itself with --base-model, else the
    Boost CPT export), a judged consultation of the final model, and the Table-1 report."""
    limit = "40" if ctx.quick else "150"
    runs, res = [], {}
    start = ("base", ctx.base_model) if ctx.base_model else ("hf_base", ctx.out / "hf_base")
    for name, model in (start, ("hf_final", ctx.out / "hf_final")):
        carebot(ctx, "eval", "eval", "mcq", "--model", str(model), "--name", name,
                "--benchmarks", "medqa,mmlu_med,pubmedqa", "--limit", limit, "--seeds", "0,1,2",
                "--out", str(ctx.d("eval") / name), "--contamination", "warn")
        runs.append(str(ctx.out / "eval" / name))
        s = json.loads((ctx.out / "eval" / name / "mcq_summary.json").read_text())
        res[f"mcq_acc_{name}"] = round(sum(b["acc_mean"] for b in s["benchmarks"].values()) / len(s["benchmarks"]), 4)
    carebot(ctx, "eval", "eval", "judge", "consult", "--model", str(ctx.out / "hf_final"), "--name", "hf_final",
            "--benchmarks", "cmtmedqa", "--limit", str(ctx.llm_items("judge_dialogues")), "--max-turns", "2",
            "--max-new-tokens", "32", "--judge-base-url", ctx.base_url, "--judge-model", ctx.models["consult"],
            *ctx.llm_args("--judge-"), "--out", str(ctx.d("eval") / "judge_final"), "--contamination", "warn",
            # a real model is a poor judge: the report shows how many turns it judged instead of failing the demo
            *(["--min-judged", "0"] if ctx.llm_kind == "model" else []))
    j = json.loads((ctx.out / "eval" / "judge_final" / "judge_summary.json").read_text())
    c = j["consult"]["cmtmedqa"]
    res.update(judged_turns=c["n_scored"], judge_turns=c["n_turns"], **llm_counts(j["llm_stats"]["cmtmedqa"]))
    carebot(ctx, "eval", "eval", "report", "--runs", *runs, str(ctx.out / "eval" / "judge_final"),
            "--out", str(ctx.d("eval") / "report"))
    pngs = sorted(p.name for p in (ctx.out / "eval" / "report").glob("*.png"))
    return {**res, "report": str(ctx.out / "eval" / "report" / "report.md"), "plots": len(pngs)}
