"""Curation throughput and memory: today's chain of single-process commands vs `carebot data curate` (datatrove,
8 tasks, 1 and 2 workers), side by side in one run, on the same real corpus at 1x and 8x.

  python benchmarks/curate_bench.py [--docs 1500] [--out runs/curate_bench]

The corpus is real medical + general, zh + en text from data_dir() (../shared/data where it is beside the
checkout: 8x needs ~12k distinct documents; samples/ holds ~1.5k), cut into 8 shard files. Both sides run the
same steps: rules + PII, domain classifier, DataRater (one frozen e5-small encoder, max_length 128), decontam,
near-dup removal, buckets. Peak RSS: the chain's largest command (its process), the pipeline's largest task
process (`peak_rss_mb` per stage in its report). JSON + Markdown under --out.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCES = {"dialogue/medquad_en_sample.jsonl": ("medical", ("question", "answer")),
           "dialogue/toyhom_internal_medicine_qa.jsonl": ("medical", ("question", "answer")),
           "dialogue/huatuo26m_test_sample.jsonl": ("medical", ("question", "answer")),
           "general/wikitext2_paragraphs_en.jsonl": ("general", ("text",)),
           "general/cmrc2018_wiki_paragraphs_zh.jsonl": ("general", ("text",))}


def corpus(n: int) -> list[dict]:
    from carebot.io import read_jsonl
    from carebot.paths import data_dir

    pools = []
    for rel, (dom, keys) in SOURCES.items():
        pools.append([{"id": f"{Path(rel).stem}-{i}", "text": "\n".join(str(r[k]) for k in keys), "_dom": dom}
                      for i, r in enumerate(read_jsonl(data_dir() / rel))])
    rows = [r for group in zip(*pools) for r in group] + [r for p in pools for r in p[min(map(len, pools)):]]
    if len(rows) < n:
        raise SystemExit(f"curate_bench: {n} documents asked, {len(rows)} in {data_dir()} (put ../shared/data beside)")
    rows = rows[:n]
    random.Random(0).shuffle(rows)
    return rows


def write(rows: list[dict], d: Path, shards: int = 8) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for s in range(shards):
        with (d / f"shard{s}.jsonl").open("w", encoding="utf-8") as f:
            f.writelines(json.dumps({k: v for k, v in r.items() if k != "_dom"}, ensure_ascii=False) + "\n"
                         for r in rows[s::shards])
    return d


# `carebot ...` that reports the peak RSS of its own process and of its children (pools) when it ends
WRAP = """import resource, runpy, sys
sys.argv = ["carebot", *sys.argv[1:]]
try:
    runpy.run_module("carebot.cli", run_name="__main__")
finally:
    print("MAXRSS_KB", max(resource.getrusage(w).ru_maxrss for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)),
          file=sys.stderr)
"""


def run(args: list[str], cache: Path) -> tuple[float, int]:
    """(seconds, peak RSS bytes of its largest process) of `carebot ...`, with its own embedding cache (the
    chain's domain and DataRater commands share one encoding, as they do in a real run; nothing is reused from
    training the heads or from another run)."""
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", WRAP, *args], cwd=REPO, capture_output=True, text=True,
                       env={**os.environ, "CAREBOT_CACHE": str(cache)})
    if p.returncode:
        raise SystemExit(f"curate_bench: {' '.join(args[:2])} failed:\n{p.stderr[-3000:]}")
    kb = int(p.stderr.rsplit("MAXRSS_KB", 1)[1].split()[0])
    return time.perf_counter() - t0, kb * 1024


def chain(inp: Path, w: Path, models: dict[str, Path]) -> dict:
    """Today's commands, one after the other, each over every shard the one before wrote."""
    def files(d: str) -> list[str]:
        return sorted(str(f) for f in (w / d).glob("*.jsonl"))

    steps = [("rules", lambda: ["data", "rules", "--input", *sorted(map(str, inp.glob("*.jsonl"))), "--out",
                                str(w / "rules"), "--no-progress"]),
             ("domain", lambda: ["data", "domain", "apply", "--model", str(models["domain"]), "--input", *files("rules"),
                                 "--out-dir", str(w / "domain")]),
             ("datarater", lambda: ["data", "datarater", "apply", "--model", str(models["datarater"]), "--input",
                                    *files("domain"), "--out-dir", str(w / "datarater")]),
             ("decontam", lambda: ["data", "decontam", "--input", *files("datarater"), "--out", str(w / "decontam"),
                                   "--no-progress"]),
             ("dedup", lambda: ["data", "dedup", "--input", *files("decontam"), "--out", str(w / "dedup")]),
             ("bucket", lambda: ["data", "bucket", "--input", *files("dedup"), "--out", str(w / "bucket")])]
    t, peak, res = 0.0, 0, {}
    for name, args in steps:
        sec, mem = run(args(), w / "cache")
        t, peak, res[name] = t + sec, max(peak, mem), round(sec, 1)
    kept = sum(len(f.read_text().splitlines()) for f in (w / "bucket").rglob("*.jsonl"))
    return {"seconds": round(t, 1), "per_command_s": res, "peak_rss_mb": peak // 2**20, "kept": kept}


def pipeline(inp: Path, out: Path, models: dict[str, Path], workers: int) -> dict:
    s, _ = run(["data", "curate", "--input", str(inp), "--out", str(out), "--tasks", "8", "--workers", str(workers),
                "--domain-model", str(models["domain"]), "--datarater-model", str(models["datarater"])], out / "cache")
    rep = json.loads((out / "report.json").read_text())
    return {"seconds": round(s, 1), "peak_rss_mb_per_task": rep["peak_rss_mb_per_task"],
            "peak_rss_mb": max(rep["peak_rss_mb_per_task"].values()), "kept": sum(rep["buckets"].values())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=1500, help="the 1x corpus (8x is 8 times this)")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "curate_bench")
    a = ap.parse_args()
    sys.path.insert(0, str(REPO))
    from data_tools.curate import datarater, domain
    from data_tools.curate.encoder import EncoderConfig, HeadConfig

    a.out.mkdir(parents=True, exist_ok=True)
    big = corpus(8 * a.docs)
    train = big[: 300]
    enc = EncoderConfig(max_length=128)
    models = {"domain": a.out / "models" / "domain", "datarater": a.out / "models" / "datarater"}
    domain.train([r["text"] for r in train], [r["_dom"] for r in train], models["domain"], enc, HeadConfig())
    datarater.train([r["text"] for r in train], [4.5 if r["_dom"] == "medical" else 2.0 for r in train],
                    models["datarater"], enc, HeadConfig())
    res: dict = {"docs_1x": a.docs, "corpus": {}}
    for scale, rows in (("1x", big[: a.docs]), ("8x", big)):
        inp = write(rows, a.out / scale / "in")
        r = {"chain": chain(inp, a.out / scale / "chain", models)}
        for wk in (1, 2):
            r[f"pipeline_{wk}w"] = pipeline(inp, a.out / scale / f"pipeline_{wk}w", models, wk)
        for k, v in r.items():
            v["docs_per_s"] = round(len(rows) / v["seconds"], 1)
        res["corpus"][scale] = r
        print(scale, json.dumps(r), flush=True)
    one, eight = res["corpus"]["1x"], res["corpus"]["8x"]
    res["pipeline_rss_8x_over_1x"] = round(eight["pipeline_1w"]["peak_rss_mb"] / one["pipeline_1w"]["peak_rss_mb"], 3)
    lines = ["| corpus | run | docs/s | vs chain | peak RSS MB (largest process / task) | kept |", "|---|---|---|---|---|---|"]
    for scale, r in res["corpus"].items():
        for k, v in r.items():
            lines.append(f"| {scale} ({res['docs_1x'] * (8 if scale == '8x' else 1)} docs) | {k} | {v['docs_per_s']} | "
                         f"{v['docs_per_s'] / r['chain']['docs_per_s']:.2f}x | {v['peak_rss_mb']} | {v['kept']} |")
    lines.append(f"\nPipeline peak RSS per task, 8x / 1x: {res['pipeline_rss_8x_over_1x']}")
    (a.out / "curate_bench.json").write_text(json.dumps(res, indent=1))
    (a.out / "curate_bench.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
