"""Reports (`carebot eval report`): the paper's Table 1 across models, a paired t-test per benchmark between
two models (paper: p < 0.05 under t-test), consultation tables (Tables 2-4), and PNG plots.

A run directory holds `mcq_summary.json` (+ per-item `mcq/<bench>/seed*.items.jsonl`) and/or
`judge_summary.json`. Baselines not evaluated here come from a results file with their source:
    {"models": {"ChatGPT": {"source": "CareBot paper, Table 1", "scores": {"medqa": 52.24, ...}}}}
(scores in percent, keyed by our benchmark names).
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

from carebot.config import parse_command
from carebot.errors import InputError
from carebot.io import write_text
from eval.benchmarks import BENCHMARKS, TABLE1, sampling_kind

COLUMNS = TABLE1 + ["medmcqa", "pubmedqa"]  # Table 1's five, then the two only in the paper's Figure 2
DIMS = ["fluency", "relevance", "completeness", "proficiency"]


def _fmt(x: float | None, nd: int = 2) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def n_cell(r: dict) -> str:
    """A benchmark result's n: `150 of 1089 (subset)` when --limit drew a subset."""
    return f"{r['n']} of {r['n_total']} (subset)" if r.get("subset") else str(r["n"])


def top_answer_warnings(benchmarks: dict) -> list[str]:
    """Benchmarks where one answer covers >= 90% of (at least 20) items: at chance however they score."""
    out = []
    for r in benchmarks.values():
        share = r.get("top_answer_share")
        if share is not None and share >= 0.9 and r.get("n", 0) >= 20:
            out.append(f"{r['title']} ('{r['top_answer']}' on {100 * share:.0f}% of items)")
    return out


def dropped_text(benchmarks: dict) -> str:
    """One line: items each benchmark's file held that the split / subject filters left out ("" if none)."""
    parts = []
    for r in benchmarks.values():
        d = r.get("dropped") or {}
        subj = d.get("subjects") or {}
        if d.get("split") or subj:
            bits = ([f"{d['split']} not in split {d.get('kept_split')!r}"] if d.get("split") else []) + [f"{k} {v}" for k, v in sorted(subj.items())]
            parts.append(f"{r['title']}: {d.get('split', 0) + sum(subj.values())} ({', '.join(bits)})")
    return ("Items dropped from the benchmark files (another split / subjects not evaluated): "
            + "; ".join(parts) + ".") if parts else ""


def mcq_markdown(summary: dict) -> str:
    """Short Markdown for one model's MCQ run: mean ± std over seeds, and how the runs differ."""
    lines = [f"# MCQ evaluation: {summary['model']}", "", f"Model dir: `{summary['model_dir']}`", ""]
    c = summary.get("contamination") or {}
    if c.get("overlap"):
        lines += [f"**CONTAMINATED** (manifest `{c['manifest']}`): " + ", ".join(f"{b}: {n} items" for b, n in c["overlap"].items()), ""]
    elif c.get("skipped") == "no manifest":
        lines += ["**Contamination check skipped**: no decontamination manifest (pass `--decontam-manifest`, or put "
                  "`decontam_manifest.json` in the model dir).", ""]
    elif c.get("skipped"):
        lines += [f"Contamination check skipped ({c['skipped']}).", ""]
    lines += ["| benchmark | n | mode | shots | acc (mean ± std) | acc_norm (mean ± std) | runs | top answer |",
              "|---|---|---|---|---|---|---|---|"]
    for b, r in summary["benchmarks"].items():
        share = r.get("top_answer_share")
        top = f"{r['top_answer']} {100 * share:.0f}%" if share is not None else "–"
        lines.append(f"| {r['title']} | {n_cell(r)} | {r['mode']} | {r['shots']} | {100 * r['acc_mean']:.2f} ± {100 * r['acc_std']:.2f} "
                     f"| {100 * r['acc_norm_mean']:.2f} ± {100 * r['acc_norm_std']:.2f} | {len(r['runs'])} | {top} |")
    subsets = [r for r in summary["benchmarks"].values() if r.get("subset")]
    if subsets:
        lines += ["", "Subsets (seeded; not comparable to full-benchmark numbers): " + "; ".join(
            f"{r['title']} seed {r['limit_seed']}: {sampling_kind(r.get('subjects'))} sample, " +
            (", ".join(f"{k} {v}" for k, v in (r.get("subjects") or {}).items() if k) or f"{r['n']} items")
            for r in subsets) + "."]
    dropped = dropped_text(summary["benchmarks"])
    if dropped:
        lines += ["", dropped]
    biased = top_answer_warnings(summary["benchmarks"])
    if biased:
        lines += ["", "**One answer for (nearly) every item**, so these scores say little about knowledge: "
                  + "; ".join(biased) + ". `--permutations N` measures the option-order bias."]
    lines += ["", "Randomness per benchmark:"]
    lines += [f"- {r['title']}: {r['randomness']}" for r in summary["benchmarks"].values()]
    rob = {b: r["robustness"] for b, r in summary["benchmarks"].items() if "robustness" in r}
    if rob:
        lines += ["", "## Option-order robustness (not part of the headline)", "",
                  "| benchmark | acc per cyclic shift | min | max | same option text chosen under all shifts |", "|---|---|---|---|---|"]
        for b, x in rob.items():
            lines.append(f"| {BENCHMARKS[b].title} | {', '.join(f'{100 * a:.1f}' for a in x['acc'])} | {100 * x['acc_min']:.2f} "
                         f"| {100 * x['acc_max']:.2f} | {100 * x['consistency']:.1f}% |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- loading
def load_run(run_dir: str | Path) -> dict:
    d = Path(run_dir)
    run = {"dir": str(d), "mcq": None, "judge": None}
    if (d / "mcq_summary.json").exists():
        run["mcq"] = json.loads((d / "mcq_summary.json").read_text())
    if (d / "judge_summary.json").exists():
        run["judge"] = json.loads((d / "judge_summary.json").read_text())
    if run["mcq"] is None and run["judge"] is None:
        raise InputError(f"{d}: no mcq_summary.json or judge_summary.json (not an eval run directory)")
    run["name"] = (run["mcq"] or run["judge"])["model"]
    return run


def label_runs(runs: list[dict]) -> list[dict]:
    """Unique row labels: a model evaluated in several run dirs is `model · run` (the path below their common dir)."""
    import os

    for name in {r["name"] for r in runs}:
        if len(same := [r for r in runs if r["name"] == name]) < 2:
            continue
        root = os.path.commonpath([str(Path(r["dir"]).resolve().parent) for r in same])
        for r in same:
            r["name"] = f"{name} · {Path(r['dir']).resolve().relative_to(root)}"
    return runs


def reported_label(name: str, source: str) -> str:
    """A baseline's row label says it was not evaluated here: `(paper)` for the CareBot paper's rows,
    `(reported)` for a baselines file's."""
    return name if name.endswith(tag := "(paper)" if source.startswith("CareBot paper") else "(reported)") else f"{name} {tag}"


def load_baselines(path: str | Path) -> list[dict]:
    """A baselines results file, or "paper" for the CareBot paper's own tables (eval/paper_baselines.py)."""
    p = Path(path)
    if str(path) == "paper":
        from eval.paper_baselines import PAPER as doc
    else:
        try:
            doc = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise InputError(f"{p}: cannot read baselines ({e})") from None
    out = []
    for name, m in doc.get("models", {}).items():
        if "source" not in m:
            raise InputError(f"{p}: baseline {name!r} has no 'source' (say where the numbers come from)")
        bad = [k for k in m.get("scores", {}) if k not in BENCHMARKS]
        if bad:
            raise InputError(f"{p}: baseline {name!r}: unknown benchmark keys {bad}")
        out.append({"name": reported_label(name, m["source"]), "source": m["source"], "scores": m.get("scores", {}), "std": m.get("std", {}),
                    "consult": m.get("consult", {})})
    return out


def scores_of(run: dict) -> dict:
    """benchmark -> (mean %, std %) for an evaluated run."""
    if not run.get("mcq"):
        return {}
    return {b: (100 * r["acc_mean"], 100 * r["acc_std"]) for b, r in run["mcq"]["benchmarks"].items()}


def table1_rows(runs: list[dict], baselines: list[dict]) -> list[dict]:
    rows = [{"name": b["name"], "source": b["source"],
             "scores": {k: (v, b["std"].get(k)) for k, v in b["scores"].items()}} for b in baselines]
    for r in runs:
        if r.get("mcq"):
            bs = r["mcq"]["benchmarks"]
            rows.append({"name": r["name"], "source": f"evaluated here ({r['dir']})", "scores": scores_of(r),
                         "n": {b: {"n": x.get("n"), "n_total": x.get("n_total", x.get("n")), "subset": bool(x.get("subset"))}
                               for b, x in bs.items()},
                         "sampling": {b: sampling_kind(x.get("subjects")) for b, x in bs.items() if x.get("subset")},
                         "subset": [b for b, x in bs.items() if x.get("subset")],
                         "top_answer_warnings": top_answer_warnings(bs)})
    for row in rows:
        s = {k: v[0] for k, v in row["scores"].items()}
        row["avg5"] = statistics.fmean(s[k] for k in TABLE1) if all(k in s for k in TABLE1) else None
        row["avg7"] = statistics.fmean(s[k] for k in COLUMNS) if all(k in s for k in COLUMNS) else None
    return rows


SUBSET_NOTE = "† subset: n of N items, a seeded sample; not comparable to full-benchmark numbers"


def table1_markdown(rows: list[dict]) -> str:
    """Table 1; cells of evaluated runs on a --limit subset carry `†` and their n (footnote below the table)."""
    head = [BENCHMARKS[k].title for k in TABLE1] + ["Avg. (5)"] + [BENCHMARKS[k].title for k in COLUMNS[5:]] + ["Avg. (7)"]
    lines = ["| Models | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    any_subset = False

    def score(r: dict, k: str) -> str:
        v = r["scores"].get(k)
        if v is None:
            return "–"
        text = _fmt(v[0]) + (f" ± {_fmt(v[1])}" if v[1] else "")
        if k in r.get("subset", ()):
            n = r["n"][k]
            text += f" † (n {n['n']} of {n['n_total']})"
        return text

    def avg(r: dict, x: float | None, ks: list[str]) -> str:
        return _fmt(x) + (" †" if x is not None and set(ks) & set(r.get("subset", ())) else "")

    for r in rows:
        any_subset = any_subset or bool(r.get("subset"))
        cell = [score(r, k) for k in TABLE1] + [avg(r, r["avg5"], TABLE1)]
        cell += [score(r, k) for k in COLUMNS[5:]] + [avg(r, r["avg7"], COLUMNS)]
        lines.append(f"| {r['name']} | " + " | ".join(cell) + " |")
    if any_subset:
        kinds = {BENCHMARKS[b].title: k for r in rows for b, k in (r.get("sampling") or {}).items()}
        lines += ["", SUBSET_NOTE + " (" + "; ".join(f"{t}: {k}" for t, k in kinds.items()) + ")."]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- significance
def item_scores(run: dict, bench: str) -> dict[str, float]:
    """Per-item correctness averaged over the run's seeds (the unit of the paired test)."""
    d = Path(run["dir"]) / "mcq" / bench
    per: dict[str, list[int]] = {}
    for f in sorted(d.glob("seed*.items.jsonl")):
        for line in f.read_text(encoding="utf-8").splitlines():
            r = json.loads(line)
            per.setdefault(r["id"], []).append(r["correct"])
    return {k: statistics.fmean(v) for k, v in per.items()}


def paired_test(a: dict[str, float], b: dict[str, float]) -> dict:
    """Paired t-test over the items both models answered (scipy.stats.ttest_rel)."""
    from scipy import stats

    ids = sorted(set(a) & set(b))
    xa, xb = [a[i] for i in ids], [b[i] for i in ids]
    if len(ids) < 2:
        return {"n": len(ids), "diff": None, "t": None, "p": None}
    diff = statistics.fmean(x - y for x, y in zip(xa, xb))
    if all(x == y for x, y in zip(xa, xb)):  # identical answers: no evidence of a difference (t is undefined)
        return {"n": len(ids), "diff": 0.0, "t": 0.0, "p": 1.0}
    t, p = stats.ttest_rel(xa, xb)
    return {"n": len(ids), "diff": 100 * diff, "t": float(t), "p": float(p)}


def significance(runs: list[dict], alpha: float = 0.05) -> list[dict]:
    out = []
    mcq = [r for r in runs if r.get("mcq")]
    for i in range(len(mcq)):
        for j in range(i + 1, len(mcq)):
            for b in COLUMNS:
                if b in mcq[i]["mcq"]["benchmarks"] and b in mcq[j]["mcq"]["benchmarks"]:
                    t = paired_test(item_scores(mcq[i], b), item_scores(mcq[j], b))
                    t.update(a=mcq[i]["name"], b=mcq[j]["name"], benchmark=b,
                             significant=t["p"] is not None and t["p"] < alpha)
                    out.append(t)
    return out


# ----------------------------------------------------------------------------- consultation tables
def consult_markdown(runs: list[dict], baselines: list[dict]) -> tuple[str, dict]:
    benches: dict[str, list[tuple[str, dict]]] = {}
    for b in baselines:
        for bench, dims in b["consult"].items():
            benches.setdefault(bench, []).append((b["name"], dims))
    for r in runs:
        for bench, res in ((r.get("judge") or {}).get("consult") or {}).items():
            benches.setdefault(bench, []).append((r["name"], {**res["dims"], "avg": res["avg"], "_res": res}))
    md = []
    for bench, rows in benches.items():
        md += [f"### {bench}", "", "| Models | Fluency | Relevance | Completeness | Proficiency | Avg. | turns judged |",
               "|---|---|---|---|---|---|---|"]
        for name, d in rows:
            res = d.get("_res", {})
            extra = f"{res.get('n_scored', '–')} of {res.get('n_turns', '–')}" if res else "(reported)"
            md.append(f"| {name} | " + " | ".join(_fmt(d.get(k)) for k in DIMS) + f" | {_fmt(d.get('avg'))} | {extra} |")
        md.append("")
    pw = [(r["name"], r["judge"]["pairwise"]) for r in runs if (r.get("judge") or {}).get("pairwise")]
    if pw:
        md += ["### Pairwise (A/B with position swap)", "", "| model A | model B | bench | win | tie | loss | failed |", "|---|---|---|---|---|---|---|"]
        for _, p in pw:
            md.append(f"| {p['a']} | {p['b']} | {p['bench']} | {p['win']} | {p['tie']} | {p['loss']} | {p['failed']} |")
        md.append("")
    return "\n".join(md), benches


# ----------------------------------------------------------------------------- plots
def plot_bars(rows: list[dict], path: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r["scores"]]
    fig, ax = plt.subplots(figsize=(max(10, 1.4 * len(COLUMNS) + 0.3 * len(rows)), 4.5))
    w = 0.8 / max(1, len(rows))
    for i, r in enumerate(rows):
        xs = [k + (i - (len(rows) - 1) / 2) * w for k in range(len(COLUMNS))]
        ys = [r["scores"].get(b, (float("nan"), None))[0] for b in COLUMNS]
        es = [r["scores"].get(b, (0, 0))[1] or 0 for b in COLUMNS]
        ax.bar(xs, ys, w, yerr=es if any(es) else None, label=r["name"], capsize=2)  # std bars only where measured
    ax.set_xticks(range(len(COLUMNS)), [BENCHMARKS[b].title for b in COLUMNS], rotation=20)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Medical MCQ benchmarks")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: never hides a bar
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_turns(runs: list[dict], path: Path) -> Path | None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = []
    for r in runs:
        for bench, res in ((r.get("judge") or {}).get("consult") or {}).items():
            pt = res.get("per_turn") or {}
            if pt:
                turns = sorted(pt, key=int)
                series.append((f"{r['name']} / {bench}", [int(t) for t in turns], [pt[t]["avg"] for t in turns]))
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, xs, ys in series:
        ax.plot(xs, ys, marker="o", label=label)
    ax.set_xlabel("turn")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("judge score (avg of 4 dimensions, 1-5)")
    ax.set_ylim(1, 5)
    ax.set_title("Consultation score per turn")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- the report
def build_report(run_dirs: list[str], out: str | Path, baselines: str | Path | None = None, alpha: float = 0.05) -> dict:

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = label_runs([load_run(d) for d in run_dirs])
    base = load_baselines(baselines) if baselines else []
    rows = table1_rows(runs, base)
    sig = significance(runs, alpha)
    consult_md, _ = consult_markdown(runs, base)
    bars = plot_bars(rows, out / "mcq_bars.png")
    turns = plot_turns(runs, out / "consult_turns.png")
    md = ["# CareBot evaluation report", "",
          "## Medical concept knowledge (Table 1 layout)", "",
          "Accuracy (%), mean ± std over the seeds of each run. Avg. (5) is the paper's Table 1 average "
          "(MedQA, MMLU-Med, CMB, CMMLU-Med, C-Eval-Med); Avg. (7) adds MedMCQA and PubMedQA.", "",
          table1_markdown(rows), "", "Sources:"]
    md += [f"- {r['name']}: {r['source']}" for r in rows]
    contaminated = [(r["name"], r["mcq"]["contamination"]["overlap"]) for r in runs
                    if r.get("mcq") and (r["mcq"].get("contamination") or {}).get("overlap")]
    for name, ov in contaminated:
        md.append(f"- **{name} is CONTAMINATED on {', '.join(ov)}** (decontamination manifest lists overlap)")
    for r in rows:
        if r.get("top_answer_warnings"):
            md.append(f"- **{r['name']} answers one option on >=90% of items**, so these scores say little about "
                      f"knowledge: {'; '.join(r['top_answer_warnings'])}")
    unchecked = [r["name"] for r in runs if r.get("mcq") and (r["mcq"].get("contamination") or {}).get("skipped")]
    if unchecked:
        md.append(f"- contamination not checked for {', '.join(unchecked)} (no decontamination manifest, or --contamination off)")
    md += ["", f"![MCQ accuracy]({bars.name})", ""]
    if sig:
        md += [f"## Paired t-test per benchmark (alpha = {alpha}; unit = item, correctness averaged over seeds)", "",
               "| A | B | benchmark | n | A − B (pts) | t | p | significant |", "|---|---|---|---|---|---|---|---|"]
        md += [f"| {s['a']} | {s['b']} | {BENCHMARKS[s['benchmark']].title} | {s['n']} | {_fmt(s['diff'])} | {_fmt(s['t'], 3)} "
               f"| {_fmt(s['p'], 4)} | {'yes' if s['significant'] else 'no'} |" for s in sig]
        md.append("")
    if consult_md:
        md += ["## Medical consultation (LLM judge, 1-5)", "", consult_md]
        if turns:
            md += [f"![per-turn scores]({turns.name})", ""]
    report = {"table1": rows, "significance": sig, "runs": [r["dir"] for r in runs],
              "plots": [str(p) for p in (bars, turns) if p], "baselines": str(baselines) if baselines else None}
    write_text(out / "report.json", json.dumps(report, indent=2, ensure_ascii=False))
    write_text(out / "report.md", "\n".join(md) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="carebot eval report", description="Table 1 + significance + plots across runs")
    ap.add_argument("--runs", nargs="+", required=True, help="eval run directories (from carebot eval mcq / judge)")
    ap.add_argument("--baselines", default=None,
                    help="results file of baselines not evaluated here, or 'paper' for the CareBot paper's tables")
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--out", required=True)
    a = parse_command(ap, argv)
    rep = build_report(a.runs, a.out, a.baselines, a.alpha)
    print(f"wrote {Path(a.out) / 'report.md'} and {', '.join(rep['plots'])}")
    return 0


if __name__ == "__main__":
    from carebot.cli import script

    script(main, "carebot eval report")
