"""Multiple-choice evaluation on the seven medical benchmarks (`carebot eval mcq`).

Two scorers, chosen per benchmark (`--mode auto` takes the benchmark's default):
- loglik: lm-eval-harness's multiple_choice: the log-likelihood of each choice continuation (" A".." D", or
  " yes"/" no"/" maybe"); `acc` = argmax, `acc_norm` = argmax of loglik / len(choice in characters).
  Deterministic: N runs are identical by construction, so it is computed once and the report says so.
- generate: the model writes an answer that `eval.extract` reads (zh + en patterns, multi-answer for CMB);
  exact set match. Greedy is deterministic; with --temperature > 0 each seed samples differently.
`--limit` (N, or per benchmark: 150,medqa=100) evaluates a seeded (`--limit-seed`) subject-stratified subset; the run
prints it, every item the split / subject filters drop, and records both in the result and the reports.
Headline = mean (and std) over the seeds. Option-order permutation is a separate robustness section,
never mixed into the headline. Every (benchmark, seed) result is written atomically, so a rerun resumes.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import logging
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from carebot.config import parse_command
from carebot.errors import ConfigError
from carebot.io import write_text
from eval import benchmarks as B
from eval.contamination import check_contamination
from eval.engine import EngineConfig, build_engine
from eval.extract import extract_answer

log = logging.getLogger(__name__)
ALL = tuple(B.BENCHMARKS)


@dataclass(kw_only=True)
class MCQConfig:
    engine: EngineConfig
    out: str
    name: str = ""  # model name in reports; default: the model directory's name
    benchmarks: tuple[str, ...] = ALL
    paths: dict[str, str] = field(default_factory=dict)  # benchmark -> local file/dir (upstream formats)
    answers: dict[str, str] = field(default_factory=dict)  # benchmark -> separate answer file (CMB test)
    mode: str = "auto"  # auto | loglik | generate
    shots: int = 0  # k-shot from the dev split (0-shot default, as CareBot reports)
    seeds: tuple[int, ...] = (0, 1, 2)
    limit: int | None = None  # items per benchmark (a seeded subject-stratified subset); None = all
    limits: dict[str, int] = field(default_factory=dict)  # benchmark -> its own limit (over `limit`)
    limit_seed: int = 0  # which subset `limit` draws
    subjects: dict[str, tuple[str, ...]] = field(default_factory=dict)  # benchmark -> subjects (over the spec's)
    max_new_tokens: int = 16
    temperature: float = 0.0
    chat: bool = False  # wrap generate-mode prompts in the tokenizer's chat template
    permutations: int = 0  # option-order robustness: this many cyclic shifts (separate report)
    contamination: str = "error"  # error | warn | off
    decontam_manifest: str | None = None


def build_context(spec: B.BenchmarkSpec, item: B.MCQItem, shots: list[B.MCQItem]) -> str:
    """description + k solved examples + the question, exactly as lm-eval concatenates them."""
    ex = "".join(f"{B.doc_to_text(spec, s)} {B.target(spec, s)}\n\n" for s in shots)
    return B.description(spec, item) + ex + B.doc_to_text(spec, item)


def score_loglik(engine, spec: B.BenchmarkSpec, items: list[B.MCQItem], contexts: list[str]) -> list[dict]:
    pairs, spans = [], []
    for it, ctx in zip(items, contexts):
        ch = B.choices(spec, it)
        spans.append((len(pairs), ch))
        pairs += [(ctx, " " + c) for c in ch]  # lm-eval's target_delimiter
    lls = engine.loglikelihood(pairs, desc=spec.name)
    rows = []
    for it, (start, ch) in zip(items, spans):
        ll = [lls[start + i][0] for i in range(len(ch))]
        norm = [v / len(c) for v, c in zip(ll, ch)]
        letters = list(it.options)
        pred, pred_n = letters[ll.index(max(ll))], letters[norm.index(max(norm))]  # first max on ties, like np.argmax
        rows.append({"id": it.id, "gold": it.answer, "pred": pred, "pred_norm": pred_n, "loglik": ll,
                     "correct": int(pred == it.answer), "correct_norm": int(pred_n == it.answer)})
    return rows


def score_generate(engine, spec: B.BenchmarkSpec, items: list[B.MCQItem], contexts: list[str], cfg: MCQConfig,
                   seed: int) -> list[dict]:
    texts = engine.generate(contexts, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, seed=seed,
                            chat=cfg.chat, desc=f"{spec.name}/seed{seed}")
    rows = []
    for it, t in zip(items, texts):
        pred = extract_answer(t, it.options, multi=it.multi)
        ok = int(pred == it.answer)
        rows.append({"id": it.id, "gold": it.answer, "pred": pred, "output": t, "correct": ok, "correct_norm": ok})
    return rows


def _metrics(rows: list[dict]) -> dict:
    n = len(rows)
    # the most frequent answer and its share: a model that always answers "A" is at chance however it scores
    top, k = collections.Counter(str(r.get("pred")) for r in rows).most_common(1)[0]
    return {"n": n, "acc": sum(r["correct"] for r in rows) / n, "acc_norm": sum(r["correct_norm"] for r in rows) / n,
            "top_answer": top, "top_answer_share": k / n}


def _mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def run_benchmark(engine, cfg: MCQConfig, name: str, out: Path) -> dict:
    spec = B.get_spec(name)
    path = cfg.paths.get(name)
    limit = cfg.limits.get(name, cfg.limit)
    info: dict = {}
    items = B.load_benchmark(name, path, limit=limit, answers=cfg.answers.get(name), limit_seed=cfg.limit_seed,
                             subjects=cfg.subjects.get(name), info=info)
    for line in describe_items(name, info):
        print(line)
    pool = B.fewshot_pool(name, path, items) if cfg.shots else []
    if cfg.shots and not pool:
        raise ConfigError(f"{name}: --shots {cfg.shots} needs a dev split (pass --path to the upstream CSV dir)")
    mode = spec.mode if cfg.mode == "auto" else cfg.mode
    deterministic = (mode == "loglik" and cfg.shots == 0) or (mode == "generate" and cfg.temperature == 0 and cfg.shots == 0)
    # What a stored result depends on: a rerun with other settings must not silently reuse it.
    fp = {"model": str(cfg.engine.model), "path": str(path or spec.path), "mode": mode, "shots": cfg.shots,
          "limit": limit, "temperature": cfg.temperature, "max_new_tokens": cfg.max_new_tokens, "chat": cfg.chat}
    if limit:  # (absent for full runs, so a full run stored before these keys existed still resumes)
        fp.update(limit_seed=cfg.limit_seed, sampling="subject-stratified")
    if name in cfg.subjects:
        fp["subjects"] = list(cfg.subjects[name])
    runs = []
    for seed in cfg.seeds:
        f = out / name / f"seed{seed}.json"
        if f.exists():  # resume: this (benchmark, seed) is done
            doc = json.loads(f.read_text())
            if doc.get("fingerprint") != fp:
                raise ConfigError(f"{f}: holds a run with other settings ({doc.get('fingerprint')}); use another --out")
            runs.append(doc["metrics"])
            continue
        if deterministic and runs:  # identical by construction: reuse the first run instead of recomputing
            first = out / name / f"seed{cfg.seeds[0]}.json"
            doc = json.loads(first.read_text())
            doc["metrics"]["seed"], doc["reused_from_seed"] = seed, cfg.seeds[0]
            write_text(f, json.dumps(doc))
            runs.append(doc["metrics"])
            continue
        ctxs = [build_context(spec, it, B.sample_fewshot(pool, it, cfg.shots, seed)) for it in items]
        rows = score_loglik(engine, spec, items, ctxs) if mode == "loglik" else score_generate(engine, spec, items, ctxs, cfg, seed)
        m = {"seed": seed, **_metrics(rows)}
        write_text(out / name / f"seed{seed}.items.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        write_text(f, json.dumps({"metrics": m, "mode": mode, "fingerprint": fp}))
        runs.append(m)
    acc_m, acc_s = _mean_std([r["acc"] for r in runs])
    nrm_m, nrm_s = _mean_std([r["acc_norm"] for r in runs])
    if mode == "loglik":
        why = ("log-likelihood scoring is deterministic: the runs are identical by construction (computed once)"
               if deterministic else f"seeds pick the {cfg.shots}-shot examples from the dev split")
    else:
        why = ("greedy decoding is deterministic: the runs are identical by construction (computed once)"
               if deterministic else f"seeds set generation sampling (temperature {cfg.temperature})"
               + (f" and the {cfg.shots}-shot examples" if cfg.shots else ""))
    res = {"title": spec.title, "lang": spec.lang, "mode": mode, "shots": cfg.shots, "n": runs[0]["n"],
           "runs": runs, "acc_mean": acc_m, "acc_std": acc_s, "acc_norm_mean": nrm_m, "acc_norm_std": nrm_s,
           "deterministic": deterministic, "randomness": why,
           "top_answer": runs[0].get("top_answer"), "top_answer_share": runs[0].get("top_answer_share"),
           **{k: info[k] for k in ("n_total", "subset", "limit_seed", "subjects", "subjects_total", "dropped",
                                   "missing_subjects")}}
    if cfg.permutations:
        res["robustness"] = option_order_robustness(engine, cfg, spec, items, out / name)
    return res


def option_order_robustness(engine, cfg: MCQConfig, spec: B.BenchmarkSpec, items: list[B.MCQItem], out: Path) -> dict:
    """Accuracy under cyclic option shifts, and how often the chosen option TEXT survives every shift."""
    f = out / "robustness.json"
    if f.exists():
        return json.loads(f.read_text())
    accs, chosen = [], []
    for shift in range(cfg.permutations + 1):
        its = [B.permute(it, shift) for it in items]
        ctxs = [build_context(spec, it, []) for it in its]
        mode = spec.mode if cfg.mode == "auto" else cfg.mode
        rows = score_loglik(engine, spec, its, ctxs) if mode == "loglik" else score_generate(engine, spec, its, ctxs, cfg, 0)
        accs.append(_metrics(rows)["acc"])
        chosen.append([it.options.get(r["pred"][:1], "") for it, r in zip(its, rows)])
    consistent = sum(len(set(c)) == 1 for c in zip(*chosen)) / len(items)
    res = {"shifts": list(range(cfg.permutations + 1)), "acc": accs, "acc_min": min(accs), "acc_max": max(accs),
           "consistency": consistent}
    write_text(f, json.dumps(res))
    return res


def run_mcq(cfg: MCQConfig) -> dict:
    out = Path(cfg.out)
    name = cfg.name or Path(cfg.engine.model).name
    contamination = check_contamination(cfg.engine.model, cfg.benchmarks, cfg.contamination, cfg.decontam_manifest)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "mcq_config.json", json.dumps(dataclasses.asdict(cfg), indent=2))
    print(json.dumps(dataclasses.asdict(cfg), indent=2))
    engine = build_engine(cfg.engine)
    results = {}
    prev = out / "mcq_summary.json"
    if prev.exists():  # a run dir grows benchmark by benchmark (e.g. CMB by generation in a second call)
        old = json.loads(prev.read_text())
        if old.get("model_dir") == str(cfg.engine.model):
            results.update(old["benchmarks"])
    results.update({b: run_benchmark(engine, cfg, b, out / "mcq") for b in cfg.benchmarks})
    summary = {"model": name, "model_dir": str(cfg.engine.model), "kind": "mcq", "benchmarks": results,
               "contamination": contamination, "config": dataclasses.asdict(cfg)}
    write_text(out / "mcq_summary.json", json.dumps(summary, indent=2, ensure_ascii=False))
    from eval.report import mcq_markdown
    write_text(out / "mcq_report.md", mcq_markdown(summary))
    return summary


def describe_items(name: str, info: dict) -> list[str]:
    """The lines a run prints about what it evaluates: the subset drawn, and every item left out of the file."""
    out = []
    subj = {k: v for k, v in info["subjects"].items() if k}
    if info["subset"]:
        from eval.benchmarks import sampling_kind

        kind = sampling_kind(info["subjects"])
        counts = f" ({', '.join(f'{k} {v}' for k, v in subj.items())})" if subj else ""
        out.append(f"{name}: seeded (seed {info['limit_seed']}) {kind} subset of {info['n']} of {info['n_total']} "
                   f"items{counts}")
    d = info["dropped"]
    n_sub = sum(d["subjects"].values())
    if d["split"] or n_sub:
        parts = ([f"{d['split']} not in split {d.get('kept_split')!r}"] if d["split"] else []) + (
            [f"{n_sub} of subjects not evaluated ("
             + ", ".join(f"{k} {v}" for k, v in sorted(d["subjects"].items())) + ")"] if n_sub else [])
        out.append(f"{name}: dropped {d['split'] + n_sub} items from the file: " + "; ".join(parts))
    if info.get("missing_subjects"):
        out.append(f"{name}: no items for subjects {', '.join(info['missing_subjects'])} in the file")
    return out


def parse_limits(text: str | None) -> tuple[int | None, dict[str, int]]:
    """`150` (every benchmark), `medqa=100,mmlu_med=150`, or `150,medqa=100` -> (default, per benchmark)."""
    default, per = None, {}
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        k, _, v = part.rpartition("=")
        k = k.strip()
        if k and k not in B.BENCHMARKS:
            raise ConfigError(f"--limit: unknown benchmark {k!r}; known: {', '.join(B.BENCHMARKS)}")
        if not re.fullmatch(r"\s*[0-9]+\s*", v) or int(v) <= 0:
            raise ConfigError(f"--limit expects N, BENCH=N or a comma list of them (N > 0), got {part!r}")
        if (k in per) if k else (default is not None):
            raise ConfigError(f"--limit: {k or 'the default'} given twice in {text!r}")
        if k:
            per[k] = int(v)
        else:
            default = int(v)
    return default, per


def parse_subjects(items: list[str]) -> dict[str, tuple[str, ...]]:
    """Repeatable `--subjects BENCH=s1,s2` -> {bench: (s1, s2)}."""
    out: dict[str, tuple[str, ...]] = {}
    for s in items:
        k, eq, v = s.partition("=")
        k = k.strip()
        subj = tuple(dict.fromkeys(x.strip() for x in v.split(",") if x.strip()))
        if not eq or not subj:
            raise ConfigError(f"--subjects expects BENCH=subject1,subject2, got {s!r}")
        if k not in B.BENCHMARKS:
            raise ConfigError(f"--subjects: unknown benchmark {k!r}; known: {', '.join(B.BENCHMARKS)}")
        if k in out:
            raise ConfigError(f"--subjects: {k} given twice")
        out[k] = subj
    return out


def add_engine_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--model", required=True, help="HF model directory (config, weights, tokenizer)")
    ap.add_argument("--engine", choices=["hf", "vllm"], default="hf")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=4096)


def engine_from_args(a: argparse.Namespace) -> EngineConfig:
    return EngineConfig(model=a.model, engine=a.engine, device=a.device, dtype=a.dtype, batch_size=a.batch_size,
                        max_length=a.max_length)


def _kv(items: list[str], flag: str) -> dict[str, str]:
    out = {}
    for s in items:
        if "=" not in s:
            raise ConfigError(f"{flag} expects BENCH=PATH, got {s!r}")
        k, v = s.split("=", 1)
        B.get_spec(k)
        out[k] = v
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="carebot eval mcq", description=__doc__.split("\n")[0])
    add_engine_args(ap)
    ap.add_argument("--out", required=True, help="run directory (resumable)")
    ap.add_argument("--name", default="")
    ap.add_argument("--benchmarks", default=",".join(B.BENCHMARKS), help=f"comma list of {', '.join(B.BENCHMARKS)}")
    ap.add_argument("--path", action="append", default=[], metavar="BENCH=PATH", help="local file/dir for a benchmark")
    ap.add_argument("--answers", action="append", default=[], metavar="BENCH=PATH", help="separate answer file (CMB)")
    ap.add_argument("--mode", choices=["auto", "loglik", "generate"], default="auto")
    ap.add_argument("--shots", type=int, default=0)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--limit", default=None, metavar="N|BENCH=N,...",
                    help="a seeded subject-stratified subset: N items of every benchmark, or per benchmark (150,medqa=100)")
    ap.add_argument("--limit-seed", type=int, default=0, help="which subset --limit draws (default 0)")
    ap.add_argument("--subjects", action="append", default=[], metavar="BENCH=S1,S2",
                    help="subjects of a benchmark, over its medical list (repeatable)")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--chat", action="store_true")
    ap.add_argument("--permutations", type=int, default=0, help="option-order robustness report (cyclic shifts)")
    ap.add_argument("--contamination", choices=["error", "warn", "off"], default="error")
    ap.add_argument("--decontam-manifest", default=None)
    a = parse_command(ap, argv)
    benches = tuple(b.strip() for b in a.benchmarks.split(",") if b.strip())
    for b in benches:
        B.get_spec(b)
    limit, limits = parse_limits(a.limit)
    cfg = MCQConfig(engine=engine_from_args(a), out=a.out, name=a.name, benchmarks=benches, paths=_kv(a.path, "--path"),
                    answers=_kv(a.answers, "--answers"), mode=a.mode, shots=a.shots,
                    seeds=tuple(int(s) for s in a.seeds.split(",")), limit=limit, limits=limits,
                    limit_seed=a.limit_seed, subjects=parse_subjects(a.subjects), max_new_tokens=a.max_new_tokens,
                    temperature=a.temperature, chat=a.chat, permutations=a.permutations,
                    contamination=a.contamination, decontam_manifest=a.decontam_manifest)
    s = run_mcq(cfg)
    print(f"wrote {Path(a.out) / 'mcq_report.md'}")
    for b, r in s["benchmarks"].items():
        n = f"{r['n']} of {r['n_total']}, subset" if r.get("subset") else r["n"]
        print(f"{r['title']:<12} acc {100 * r['acc_mean']:.2f} ± {100 * r['acc_std']:.2f}  (n={n}, {r['mode']})")
    return 0


if __name__ == "__main__":
    from carebot.cli import script

    script(main, "carebot eval mcq")
