"""The report of `carebot data curate`: every step's counters, summed over every task that completed (datatrove's
`logs/<stage>/stats/NNNNN.json`, including tasks finished by an earlier, interrupted run), as report.json, a
Markdown table and a funnel plot (docs left after each step, then per bucket)."""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from carebot.io import write_json, write_text


def _value(v) -> float:
    return v["total"] if isinstance(v, dict) else v


STAGES = ("1_score", "2_buckets", "3_cluster", "4_hq_cut", "5_write")  # the pipeline's datatrove stages (curate.py)


def merged_stats(out: Path) -> dict[str, dict[str, dict[str, float]]]:
    """{stage: {step name: {counter: sum over tasks}}}"""
    res: dict = {}
    for stage in STAGES:
        steps: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        for f in sorted((out / "logs" / stage / "stats").glob("*.json")):
            for step in json.loads(f.read_text()):
                name = step["name"].split(": ", 1)[-1]
                for k, v in step["stats"].items():
                    if k == "peak_rss_mb":  # a max over tasks, not a sum
                        steps[name][k] = max(steps[name][k], v.get("max", v["total"]) if isinstance(v, dict) else v)
                    elif k != "doc_len" and not k.endswith(".jsonl"):
                        steps[name][k] += _value(v)
                steps[name]["seconds"] += step["time_stats"]["total"] if step.get("time_stats") else 0.0
        res[stage] = {k: dict(v) for k, v in steps.items()}
    return res


def write_report(out: Path) -> dict:
    st = merged_stats(out)
    s1, s3, s4 = st["1_score"], st["3_cluster"], st["5_write"]
    docs_in = s1.get("read", {}).get("docs", 0)
    funnel = [("input", docs_in)]
    drops: dict[str, float] = {"empty_text": s1.get("read", {}).get("empty_text", 0)}
    for step in ("rules + PII", "decontam"):
        if step in s1:
            funnel.append((f"after {step}", s1[step].get("forwarded", 0)))
            drops.update({k[len("dropped_"):]: v for k, v in s1[step].items() if k.startswith("dropped_")})
    nd = next((v for k, v in s4.items() if "MinHash" in k), {})  # datatrove's MinhashDedupFilter
    funnel.append(("after near-dup", nd.get("forwarded", 0)))
    drops["near_dup"] = nd.get("dropped", 0)
    buckets = {k: v for k, v in s4.get("bucket", {}).items() if k not in ("seconds", "peak_rss_mb")}
    cut = out / "work" / "hq_cut.json"
    rep = {"funnel": dict(funnel),
           "medical_hq_cut": json.loads(cut.read_text()) if cut.exists() else None, "drops": {k: int(v) for k, v in drops.items() if v}, "buckets": {k: int(v) for k, v in sorted(buckets.items())},
           "near_dup_clusters": int(s3.get("near-dup clusters", {}).get("clusters", 0)),
           "near_dup_candidate_pairs": int(s3.get("near-dup clusters", {}).get("candidate_pairs", 0)),
           "pii_redacted": {k[4:]: int(v) for k, v in s1.get("rules + PII", {}).items() if k.startswith("pii_")},
           "contaminated_by_benchmark": {k[len("contaminated_"):]: int(v) for k, v in s1.get("decontam", {}).items()
                                         if k.startswith("contaminated_")},
           "peak_rss_mb_per_task": {stage: max((v.get("peak_rss_mb", 0) for v in steps.values()), default=0)
                                    for stage, steps in st.items()},
           "steps": st}
    write_json(out / "report.json", rep)
    lines = ["# Curation report", "", "| step | docs |", "|---|---|"] + [f"| {k} | {int(v)} |" for k, v in funnel]
    lines += ["", "| dropped because | docs |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rep["drops"].items()]
    lines += ["", "| bucket | docs |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rep["buckets"].items()]
    write_text(out / "report.md", "\n".join(lines) + "\n")
    _plot(out / "funnel.png", funnel, rep["buckets"])
    return rep


def write_decontam_manifest(out: Path) -> dict:
    """out/decontam_manifest.json from the documents decontam excluded (their `contaminated` items), in
    `carebot data decontam`'s format, for eval's contamination guard."""
    from carebot.io import iter_jsonl
    from data_tools.curate.decontam import DecontamConfig, Index, make_manifest
    from data_tools.curate.steps import loaded

    cfg = DecontamConfig()  # the index steps.DecontamFilter matched against (built already here with 1 worker)
    index = loaded(("decontam", repr(cfg)), lambda: Index(cfg))
    per_bench: dict[str, set[str]] = {b: set() for b in index.n_items}
    removed = []
    for f in sorted((out / "excluded" / "decontam").glob("*.jsonl")):
        for _, rec in iter_jsonl(f):
            its = [tuple(x.split(":", 1)) for x in rec["contaminated"]]
            for b, iid in its:
                per_bench.setdefault(b, set()).add(iid)
            removed.append({"id": rec["id"], "benchmarks": sorted({b for b, _ in its}), "items": rec["contaminated"][:20]})
    m = make_manifest(index, per_bench, removed, {})
    write_json(out / "decontam_manifest.json", m)
    return m


def _plot(path: Path, funnel: list[tuple[str, float]], buckets: dict[str, int]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [k for k, _ in funnel] + [f"bucket {k}" for k in buckets]
    vals = [v for _, v in funnel] + list(buckets.values())
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(labels) + 1))
    ax.barh(range(len(vals)), vals, color=["#4c72b0"] * len(funnel) + ["#55a868"] * len(buckets))
    ax.set_yticks(range(len(vals)), labels)
    ax.invert_yaxis()
    for i, v in enumerate(vals):
        ax.text(v, i, f" {int(v)}", va="center")
    ax.set_xlabel("documents")
    ax.set_title("carebot data curate: documents after each step")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
