"""`carebot demo`: the whole CareBot pipeline on real data with tiny models on CPU, in minutes.

Each step runs the real `carebot` command in a subprocess (exactly what a user would type), records its
output counts, and writes `OUT/<step>/demo_step.json`: rerunning the demo skips finished steps. The LLM calls
(labeling, judging) go to a local OpenAI-protocol server started here and answered by a rule-based labeler
/ judge (`data_tools/fake_openai.py`): point `--base-url` at a real endpoint to use a real model.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from data_tools.paths import cache_dir, data_dir

# raw corpus: (file, text fields, docs per source (full, quick)) — medical and general, zh and en, mixed
# together as a general crawl would be; the pipeline has to find the medical part itself.
SOURCES = [
    ("dialogue/medquad_en_sample.jsonl", ("question", "answer"), (600, 150)),
    ("dialogue/huatuo26m_test_sample.jsonl", ("question", "answer"), (600, 150)),
    ("dialogue/toyhom_internal_medicine_qa.jsonl", ("question", "answer"), (600, 150)),
    ("general/wikitext2_paragraphs_en.jsonl", ("text",), (600, 150)),
    ("general/mmlu_nonmedical_en.jsonl", ("text",), (400, 150)),
    ("general/cmrc2018_wiki_paragraphs_zh.jsonl", ("text",), (600, 150)),
    ("general/thucnews_titles_zh.jsonl", ("text",), (600, 150)),
]


@dataclass
class Ctx:
    out: Path
    data: Path
    quick: bool
    base_url: str = ""
    counts: dict = field(default_factory=dict)

    def d(self, name: str) -> Path:
        p = self.out / name
        p.mkdir(parents=True, exist_ok=True)
        return p


def carebot(ctx: Ctx, step: str, *args: str) -> None:
    """Run one `carebot ...` command; its output goes to OUT/logs/<step>.log (tail shown on failure)."""
    log = ctx.d("logs") / f"{step}.log"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    cmd = [sys.executable, "-m", "launch.cli", *args]
    with open(log, "a") as f:
        f.write(f"$ carebot {' '.join(args)}\n")
        f.flush()
        p = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=Path(__file__).parents[1])
    if p.returncode:
        tail = "".join(log.read_text(errors="replace").splitlines(True)[-25:])
        raise SystemExit(f"demo step '{step}' failed (exit {p.returncode}); log {log}:\n{tail}")


def jl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def write_jl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------- steps
def s_corpus(ctx: Ctx) -> dict:
    rows = []
    for rel, keys, (n_full, n_quick) in SOURCES:
        f = ctx.data / rel
        if not f.exists():
            continue
        for i, d in enumerate(jl(f)[: n_quick if ctx.quick else n_full]):
            text = "\n".join(str(d[k]) for k in keys if d.get(k))
            rows.append({"id": f"{f.stem}-{i}", "text": text, "source": f.stem})
    write_jl(ctx.d("corpus") / "raw.jsonl", rows)
    return {"docs": len(rows), "sources": len({r["source"] for r in rows})}


def s_rules(ctx: Ctx) -> dict:
    carebot(ctx, "rules", "data", "rules", "--input", str(ctx.out / "corpus" / "raw.jsonl"),
            "--out", str(ctx.d("rules")), "--workers", "2", "--no-progress")
    s = json.loads((ctx.out / "rules" / "summary.json").read_text())["totals"]
    return {"docs": s["docs"], "kept": s["kept"]}


def _kept_corpus(ctx: Ctx) -> Path:
    return next(p for p in (ctx.out / "rules").rglob("*.jsonl") if "excluded" not in p.parts and p.stem == "raw")


def s_label(ctx: Ctx) -> dict:
    carebot(ctx, "label", "data", "label", "--input", str(_kept_corpus(ctx)), "--out", str(ctx.d("label")),
            "--base-url", ctx.base_url, "--limit", "300" if ctx.quick else "800", "--no-progress")
    s = json.loads((ctx.out / "label" / "summary.json").read_text())
    return {"labelled": s["items"], "kept_consistent": s["kept"], **{f"kept_{k}": v for k, v in s["kept_by_domain"].items()}}


def s_domain(ctx: Ctx) -> dict:
    carebot(ctx, "domain", "data", "domain", "train", "--train", str(ctx.out / "label" / "train.jsonl"),
            "--out", str(ctx.d("domain") / "model"))
    carebot(ctx, "domain", "data", "domain", "apply", "--model", str(ctx.out / "domain" / "model"),
            "--input", str(_kept_corpus(ctx)), "--out-dir", str(ctx.d("domain") / "scored"))
    rep = json.loads((ctx.out / "domain" / "model" / "report.json").read_text()) \
        if (ctx.out / "domain" / "model" / "report.json").exists() else {}
    docs = jl(next((ctx.out / "domain" / "scored").glob("*.jsonl")))
    return {"held_out_acc": rep.get("test", {}).get("accuracy", rep.get("accuracy")), "scored": len(docs),
            "medical": sum(d.get("domain") == "medical" for d in docs)}


def s_datarater(ctx: Ctx) -> dict:
    carebot(ctx, "datarater", "data", "datarater", "train", "--train", str(ctx.out / "label" / "train.jsonl"),
            "--out", str(ctx.d("datarater") / "model"))
    carebot(ctx, "datarater", "data", "datarater", "apply", "--model", str(ctx.out / "datarater" / "model"),
            "--input", *map(str, (ctx.out / "domain" / "scored").glob("*.jsonl")),
            "--out-dir", str(ctx.d("datarater") / "scored"))
    docs = jl(next((ctx.out / "datarater" / "scored").glob("*.jsonl")))
    return {"scored": len(docs), "quality_ge_3": sum(float(d.get("quality", 0)) >= 3 for d in docs)}


STEPS: list[tuple[str, str, Callable[[Ctx], dict]]] = [
    ("corpus", "assemble a mixed zh/en, medical/general raw corpus from real data", s_corpus),
    ("rules", "bilingual rule filters + PII scrub", s_rules),
    ("label", "LLM labels, two rounds, keep consistent (local OpenAI-protocol server)", s_label),
    ("domain", "domain classifier: train on labels, apply to the corpus", s_domain),
    ("datarater", "DataRater: train on label scores, apply", s_datarater),
]


def report(ctx: Ctx, timings: dict) -> Path:
    rows = "".join(f"| {i + 1} | {name} | {timings.get(name, 0):.1f} | "
                   f"{', '.join(f'{k}={v}' for k, v in ctx.counts.get(name, {}).items())} |\n"
                   for i, (name, _, _) in enumerate(STEPS))
    md = (f"# CareBot demo report\n\ndata: `{ctx.data}`; quick: {ctx.quick}; LLM endpoint: {ctx.base_url} "
          "(rule-based labeler / judge)\n\n| # | step | seconds | outputs |\n|---|---|---|---|\n" + rows)
    (ctx.out / "report.md").write_text(md, encoding="utf-8")
    (ctx.out / "report.json").write_text(json.dumps({"counts": ctx.counts, "seconds": timings}, indent=2))
    return ctx.out / "report.md"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="carebot demo", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/demo")
    ap.add_argument("--quick", action="store_true", help="fewer documents and steps (CI)")
    ap.add_argument("--base-url", default="", help="OpenAI-compatible endpoint (default: a local rule-based one)")
    ap.add_argument("--fresh", action="store_true", help="ignore finished steps of an earlier run")
    a = ap.parse_args(argv)
    ctx = Ctx(out=Path(a.out), data=data_dir(), quick=a.quick)
    ctx.out.mkdir(parents=True, exist_ok=True)
    server = None
    if not a.base_url:
        from data_tools.fake_openai import FakeOpenAI
        server = FakeOpenAI().start()
        ctx.base_url = server.base_url
    else:
        ctx.base_url = a.base_url
    timings: dict[str, float] = {}
    print(f"[demo] data {ctx.data} -> {ctx.out}; LLM endpoint {ctx.base_url}"
          f"{' (local rule-based labeler/judge)' if server else ''}", flush=True)
    try:
        for i, (name, what, fn) in enumerate(STEPS):
            done = ctx.out / name / "demo_step.json"
            if done.exists() and not a.fresh:
                ctx.counts[name] = json.loads(done.read_text())
                print(f"[demo {i + 1:>2}/{len(STEPS)}] {name}: done earlier {ctx.counts[name]}", flush=True)
                continue
            print(f"[demo {i + 1:>2}/{len(STEPS)}] {name}: {what} ...", flush=True)
            t0 = time.time()
            ctx.counts[name] = fn(ctx)
            timings[name] = time.time() - t0
            ctx.d(name)
            done.write_text(json.dumps(ctx.counts[name]))
            print(f"[demo {i + 1:>2}/{len(STEPS)}] {name}: {ctx.counts[name]} ({timings[name]:.1f} s)", flush=True)
    finally:
        if server:
            server.stop()
    path = report(ctx, timings)
    print(f"[demo] finished; report: {path}", flush=True)
    return 0
