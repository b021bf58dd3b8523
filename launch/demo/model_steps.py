"""The demo's model steps: Stable and Boost CPT, HF export, SFT data selection, SFT, DPO pairs, DPO, eval."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from launch.demo.context import Ctx, carebot, jl, tokenizer_dir, write_jl
from launch.pipeline import PIPELINE, STAGES, checkpoint_dir, plan


def _cpt_overrides(ctx: Ctx, name: str) -> list[str]:
    steps = 30 if ctx.quick else 120
    return [f"output_dir={ctx.out / name}", f"data.tokenizer={tokenizer_dir(ctx)}", f"train.train_steps={steps}",
            f"checkpoint.save_interval={steps}", "train.eval_interval=0", "train.log_interval=10",
            "data.split=100,0,0"]  # no CPT eval here; a small bucket cannot spare a 1% valid split


def _last(path: Path) -> dict:
    return json.loads((path / "metrics.jsonl").read_text().splitlines()[-1])


# the model stages follow the one stage graph (launch.pipeline), with each training stage's CPU twin recipe
_PLAN = plan(PIPELINE)
_TRAIN = {s.stage: s for s in _PLAN if s.spec.trains}
_CONVERTS = [PIPELINE[s.source] for s in _PLAN if s.stage == "convert"]  # the training stages exported to HF


def _recipe(stage: str) -> str:
    return STAGES[stage].tiny_recipe


def _init_from(ctx: Ctx, stage: str) -> list[str]:
    """`checkpoint.init_from=` the checkpoint of the stage this one starts from (its best one if it kept one)."""
    src = _TRAIN[stage].source
    if src is None:
        return []
    run = ctx.out / PIPELINE[src]
    return [f"checkpoint.init_from={checkpoint_dir(run, (run / 'best' / 'latest').exists())}"]


def s_stable(ctx: Ctx) -> dict:
    carebot(ctx, "stable", "pretrain", "--config", _recipe("stable"), str(ctx.out / "blend" / "stable.yaml"),
            *_cpt_overrides(ctx, "stable"), *_init_from(ctx, "stable"))
    first = json.loads((ctx.out / "stable" / "metrics.jsonl").read_text().splitlines()[0])
    last = _last(ctx.out / "stable")
    return {"steps": last["step"], "loss_first": round(first["loss"], 3), "loss_last": round(last["loss"], 3),
            "tokens_per_s": round(last["tokens_per_s"])}


def s_boost(ctx: Ctx) -> dict:
    carebot(ctx, "boost", "pretrain", "--config", _recipe("boost"), str(ctx.out / "blend" / "boost.yaml"),
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
    shutil.copy(ctx.out / "decontam" / "manifest.json", ctx.out / name / "decontam_manifest.json")
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
            "--out", str(ctx.d("sft_select") / "deita"), "--top-frac", "0.7", "--no-progress")
    sel = ctx.out / "sft_select" / "deita" / "selected.jsonl"
    return {"built": len(jl(built)), "selected": len(jl(sel)), "selected_file": str(sel)}


def s_sft(ctx: Ctx) -> dict:
    sel = ctx.counts["sft_select"]["selected_file"]
    steps = 20 if ctx.quick else 60
    carebot(ctx, "sft", "sft", "--config", _recipe("sft"), f"output_dir={ctx.out / 'sft'}",
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
            "--n-subjective", "40" if ctx.quick else "150", "--base-url", ctx.base_url, "--model", ctx.models["doctor"],
            "--out", str(ctx.d("dpo_pairs")),
            "--no-progress")
    s = json.loads((ctx.out / "dpo_pairs" / "summary.json").read_text()) if (ctx.out / "dpo_pairs" / "summary.json").exists() else {}
    pairs = ctx.out / "dpo_pairs" / "pairs.jsonl"
    return {"pairs": len(jl(pairs)), **{k: v for k, v in s.items() if isinstance(v, int) and k != "seed"},
            "pairs_file": str(pairs)}


def s_dpo(ctx: Ctx) -> dict:
    # lr 1e-4 (tiny_dpo's 1e-3 is for tests that overfit a few pairs): measured on the full demo's 40 held-out
    # pairs, 1e-3 ends at val margin +0.004-0.04 after going negative, 1e-4 rises steadily to +0.02 (acc 0.65)
    steps, pairs = (10, 64) if ctx.quick else (30, 200)
    valid = int(pairs * 0.2)
    carebot(ctx, "dpo", "dpo", "--config", _recipe("dpo"), f"output_dir={ctx.out / 'dpo'}",
            f"data.tokenizer={tokenizer_dir(ctx)}", f"data.data_path=[{ctx.counts['dpo_pairs']['pairs_file']}]",
            f"train.train_steps={steps}", "train.epochs=null", f"stage_args.max_pairs={pairs}",
            "optim.lr=1e-4", "optim.min_lr=1e-5", "stage_args.valid_fraction=0.2", f"train.eval_interval={steps // 3}",
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


def s_eval(ctx: Ctx) -> dict:
    limit = "40" if ctx.quick else "150"
    runs = []
    for name in ("hf_base", "hf_final"):
        carebot(ctx, "eval", "eval", "mcq", "--model", str(ctx.out / name), "--name", name,
                "--benchmarks", "medqa,mmlu_med,pubmedqa", "--limit", limit, "--seeds", "0,1,2",
                "--out", str(ctx.d("eval") / name), "--contamination", "warn")
        runs.append(str(ctx.out / "eval" / name))
    carebot(ctx, "eval", "eval", "judge", "consult", "--model", str(ctx.out / "hf_final"), "--name", "hf_final",
            "--benchmarks", "cmtmedqa", "--limit", "3" if ctx.quick else "10", "--max-turns", "2",
            "--max-new-tokens", "32", "--judge-base-url", ctx.base_url, "--judge-model", ctx.models["consult"],
            "--out", str(ctx.d("eval") / "judge_final"),
            "--contamination", "warn")
    carebot(ctx, "eval", "eval", "report", "--runs", *runs, str(ctx.out / "eval" / "judge_final"),
            "--out", str(ctx.d("eval") / "report"))
    pngs = sorted(p.name for p in (ctx.out / "eval" / "report").glob("*.png"))
    return {"report": str(ctx.out / "eval" / "report" / "report.md"), "plots": len(pngs)}
