"""Side-by-side benchmark of `carebot data tokenize` against Megatron-LM's preprocessors (not a test).

Same corpus (all of the full data sets flattened to one text per record; once as is, once repeated to >= 100 MB, and
ours also at >= 400 MB for memory flatness), same LLaMA-3 tokenizer, same cores. Whole-process wall (imports
included), docs/s, tokens/s and peak RSS of the whole process tree, each tool run --runs times, alternating:
  ours        python -m data_tools.tokens.tokenize ... --eod-token <|eot_id|>   (Megatron's HF EOD, so outputs compare)
  megatron    tools/preprocess_data.py --append-eod --workers N
  fast        tools/preprocess_data_fast.py --append-eod --use-gigatoken
  ceilings    HF tokenizers encode_batch / gigatoken encode_batch over the texts already in memory
Megatron-LM runs from a temporary copy of the given checkout, patched there only (triton imports stubbed on this
CPU box, typing.override from typing_extensions on Python 3.11); nothing of it is kept.

    python benchmarks/tokenize_bench.py --megatron /path/to/Megatron-LM [--runs 2] [--workdir /tmp/tokbench]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SKIP_KEYS = {"id", "lang", "source", "split", "domain", "subset", "label", "answer"}
TRITON_STUB = '''"""Import-only stand-in for triton (benchmark copy of Megatron-LM on a CPU machine)."""
__version__ = "3.0.0"
class Any:
    def __init__(self, *a, **k): pass
    def __call__(self, *a, **k): return a[0] if len(a) == 1 and callable(a[0]) and not k else Any()
    def __getattr__(self, n):
        if n.startswith("__"): raise AttributeError(n)
        return Any()
    def __getitem__(self, k): return Any()
    def __mro_entries__(self, bases): return (object,)
def jit(*a, **k): return a[0] if len(a) == 1 and callable(a[0]) and not k else (lambda f: f)
autotune = heuristics = lambda *a, **k: (lambda f: f)
tl = language = Any()
def __getattr__(n):
    if n.startswith("__"): raise AttributeError(n)
    return Any()
'''


# ---------------------------------------------------------------------------------------------- corpus
def _leaves(x, key=None):
    if isinstance(x, str):
        if key not in SKIP_KEYS and x.strip():
            yield x
    elif isinstance(x, dict):
        for k, v in x.items():
            yield from _leaves(v, k)
    elif isinstance(x, list):
        for v in x:
            yield from _leaves(v, key)


def build_corpora(data_root: Path, work: Path, min_mb: list[int]) -> dict[str, Path]:
    """corpus_x1.jsonl (every record of every data file as {"text"}) and repeats of it >= each size."""
    work.mkdir(parents=True, exist_ok=True)
    one = work / "corpus_x1.jsonl"
    if not one.exists():
        with open(str(one) + ".tmp", "w", encoding="utf-8") as out:
            for f in sorted(data_root.glob("*/*.jsonl")):
                for line in open(f, encoding="utf-8"):
                    text = "\n".join(_leaves(json.loads(line)))
                    out.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
        os.replace(str(one) + ".tmp", one)
    out = {"x1": one}
    raw = one.read_bytes()
    for mb in min_mb:
        reps = -(-(mb << 20) // len(raw))
        p = work / f"corpus_x{reps}.jsonl"
        if not p.exists():
            with open(str(p) + ".tmp", "wb") as f:
                for _ in range(reps):
                    f.write(raw)
            os.replace(str(p) + ".tmp", p)
        out[f"x{reps}"] = p
    return out


# ---------------------------------------------------------------------------------------------- megatron copy
def prepare_megatron(src: Path, work: Path) -> Path:
    """Temporary patched copy of a Megatron-LM work tree (tools/ + megatron/)."""
    dst = work / "megatron-lm"
    if (dst / ".patched").exists():
        return dst
    shutil.rmtree(dst, ignore_errors=True)
    for sub in ("tools", "megatron"):
        shutil.copytree(src / sub, dst / sub)
    (dst / "_triton_stub.py").write_text(TRITON_STUB)
    for f in (dst / "megatron").rglob("*.py"):
        s = f.read_text()
        t = re.sub(r"^import triton\.language as tl$", "from _triton_stub import tl", s, flags=re.M)
        t = re.sub(r"^import triton$", "import _triton_stub as triton", t, flags=re.M)
        t = re.sub(r"^from typing import (.*), override$", r"from typing import \1\nfrom typing_extensions import override",
                   t, flags=re.M)
        if t != s:
            f.write_text(t)
    (dst / ".patched").write_text("triton stubbed, typing.override from typing_extensions\n")
    return dst


# ---------------------------------------------------------------------------------------------- measuring
def run_measured(cmd: list[str], env: dict, cwd: Path) -> dict:
    """Wall time and peak RSS summed over the process tree (sampled every 20 ms)."""
    import psutil

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ps, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            rss = sum(p.memory_info().rss for p in [ps] + ps.children(recursive=True))
            peak = max(peak, rss)
        except psutil.Error:
            pass
        time.sleep(0.02)
    wall = time.perf_counter() - t0
    log = proc.stdout.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{log[-3000:]}")
    return {"wall_s": wall, "peak_rss_mb": peak / 2**20, "log": log}


def idx_counts(prefix: str) -> tuple[int, int]:
    """(documents, tokens) from a megatron .idx."""
    with open(prefix + ".idx", "rb") as f:
        head = f.read(34)
        n = int(np.frombuffer(head[18:26], dtype=np.uint64)[0])
        lens = np.frombuffer(f.read(4 * n), dtype=np.int32)
    return n, int(lens.sum(dtype=np.int64))


def ceiling(kind: str, corpus: str, tok: str) -> None:
    """Child mode: encode texts already in memory; print JSON with the encode-only time."""
    import orjson

    texts = [orjson.loads(line)["text"] for line in open(corpus, "rb")]
    data = Path(tok, "tokenizer.json").read_bytes()
    if kind == "hf":
        import tokenizers

        t = tokenizers.Tokenizer.from_str(data.decode())
        t0 = time.perf_counter()
        n = sum(len(e.ids) for e in t.encode_batch_fast(texts, add_special_tokens=False))
    else:
        import gigatoken

        g = gigatoken.Tokenizer.from_json(data)
        t0 = time.perf_counter()
        r = g.encode_batch(texts)
        n = int(r.layout.offsets.data[-1])
    print(json.dumps({"encode_s": time.perf_counter() - t0, "docs": len(texts), "tokens": n}))


# ---------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--megatron", type=Path, help="Megatron-LM work tree (tools/, megatron/); omit to skip (b), (c)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/tokbench"))
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--min-mb", type=int, default=100)
    ap.add_argument("--big-mb", type=int, default=400, help="ours only, for RSS flatness; 0 to skip")
    ap.add_argument("--skip-x1", action="store_true", help="only the >= --min-mb corpus (and --big-mb)")
    ap.add_argument("--megatron-runs", type=int, default=None, help="runs of preprocess_data.py (default --runs)")
    ap.add_argument("--hf-ceiling-max-mb", type=float, default=1e9, help="skip the HF encode ceiling above this")
    ap.add_argument("--ceiling", choices=["hf", "giga"], help=argparse.SUPPRESS)
    ap.add_argument("--corpus", help=argparse.SUPPRESS)
    ap.add_argument("--tok", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.ceiling:
        ceiling(a.ceiling, a.corpus, a.tok)
        return 0

    from carebot.paths import cache_dir, data_dir
    from carebot.tokenizer import build_llama3_tokenizer

    tok = str(build_llama3_tokenizer(cache_dir() / "llama3-tokenizer"))
    corpora = build_corpora(data_dir(), a.workdir, [a.min_mb] + ([a.big_mb] if a.big_mb else []))
    names = list(corpora)
    big = names[2] if a.big_mb else None
    mlm = prepare_megatron(a.megatron, a.workdir) if a.megatron else None
    env = dict(os.environ, PYTHONPATH=f"{REPO}", TOKENIZERS_PARALLELISM="true")
    menv = dict(os.environ, PYTHONPATH=f"{mlm}") if mlm else None
    out_dir = a.workdir / "out"

    def tools(corpus: Path, tag: str) -> dict[str, tuple[list[str], dict, Path, str | None]]:
        c = str(corpus)
        t = {"ours": ([sys.executable, "-m", "data_tools.tokens.tokenize", "--input", c, "--output-prefix",
                       f"{out_dir}/ours_{tag}", "--tokenizer-model", tok, "--workers", str(a.workers),
                       "--eod-token", "<|eot_id|>"], env, REPO, f"{out_dir}/ours_{tag}_text_document")}
        if mlm:
            common = ["--input", c, "--json-keys", "text", "--tokenizer-type", "HuggingFaceTokenizer",
                      "--tokenizer-model", tok, "--append-eod"]
            t["megatron"] = ([sys.executable, "tools/preprocess_data.py", *common, "--output-prefix",
                              f"{out_dir}/mlm_{tag}", "--workers", str(a.workers)], menv, mlm,
                             f"{out_dir}/mlm_{tag}_text_document")
            t["fast"] = ([sys.executable, "tools/preprocess_data_fast.py", *common, "--output-prefix",
                          f"{out_dir}/fast_{tag}", "--use-gigatoken"], menv, mlm, f"{out_dir}/fast_{tag}_text_document")
        for kind in ("hf", "giga"):
            t[f"ceiling_{kind}"] = ([sys.executable, str(Path(__file__).resolve()), "--ceiling", kind, "--corpus", c,
                                     "--tok", tok], env, REPO, None)
        return t

    results: list[dict] = []
    for tag in names[1:2] if a.skip_x1 else names[:2]:
        corpus = corpora[tag]
        ts = tools(corpus, tag)
        if corpus.stat().st_size > a.hf_ceiling_max_mb * 2**20:
            ts.pop("ceiling_hf")
        for r in range(a.runs):
            order = list(ts) if r % 2 == 0 else list(reversed(ts))  # alternate so no tool always runs warm
            for name in order:
                if name == "megatron" and r >= (a.megatron_runs or a.runs):
                    continue
                cmd, e, cwd, prefix = ts[name]
                shutil.rmtree(out_dir, ignore_errors=True)
                out_dir.mkdir(parents=True)
                m = run_measured(cmd, e, cwd)
                row = {"corpus": tag, "mb": corpus.stat().st_size / 2**20, "tool": name, "run": r,
                       "wall_s": m["wall_s"], "peak_rss_mb": m["peak_rss_mb"]}
                if prefix:
                    row["docs"], row["tokens"] = idx_counts(prefix)
                    if r == 0:
                        keep = out_dir.parent / "keep"
                        keep.mkdir(exist_ok=True)
                        for ext in (".bin", ".idx"):
                            shutil.copy(prefix + ext, keep / f"{name}_{tag}{ext}")
                else:
                    c = json.loads(m["log"].strip().splitlines()[-1])
                    row.update(docs=c["docs"], tokens=c["tokens"], encode_s=c["encode_s"])
                results.append(row)
                print(json.dumps(row), flush=True)
    # Byte-identity checks on the kept first-run outputs.
    keep = out_dir.parent / "keep"
    checks = {}
    for tag in names[1:2] if a.skip_x1 else names[:2]:
        if mlm:
            checks[f"ours == preprocess_data.py ({tag})"] = all(
                (keep / f"ours_{tag}{x}").read_bytes() == (keep / f"megatron_{tag}{x}").read_bytes() for x in (".bin", ".idx"))
    # Full corpus: gigatoken engine == HF tokenizers engine, byte for byte, on every data file.
    shutil.rmtree(out_dir, ignore_errors=True)
    for engine in ("gigatoken", "hf"):
        subprocess.run([sys.executable, "-m", "data_tools.tokens.tokenize", "--input", str(corpora["x1"]), "--output-prefix",
                        f"{out_dir}/{engine}", "--tokenizer-model", tok, "--engine", engine], env=env, cwd=REPO,
                       check=True, capture_output=True)
    checks["gigatoken == HF tokenizers engine (x1, all the data)"] = all(
        Path(f"{out_dir}/gigatoken_text_document{x}").read_bytes() == Path(f"{out_dir}/hf_text_document{x}").read_bytes()
        for x in (".bin", ".idx"))
    if big:  # memory flatness: ours on >= 400 MB
        shutil.rmtree(out_dir, ignore_errors=True)
        cmd, e, cwd, prefix = tools(corpora[big], big)["ours"]
        m = run_measured(cmd, e, cwd)
        d, t = idx_counts(prefix)
        row = {"corpus": big, "mb": corpora[big].stat().st_size / 2**20, "tool": "ours", "run": 0,
               "wall_s": m["wall_s"], "peak_rss_mb": m["peak_rss_mb"], "docs": d, "tokens": t}
        results.append(row)
        print(json.dumps(row), flush=True)
    report = summarize(results, checks)
    print(report)
    (a.workdir / "results.json").write_text(json.dumps({"results": results, "checks": checks}, indent=1))
    (a.workdir / "report.md").write_text(report)
    return 0


def summarize(results: list[dict], checks: dict) -> str:
    load = os.getloadavg()
    lines = [f"machine: {os.cpu_count()} cores, load average at end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}",
             "", "| corpus | MB | tool | runs | wall s (each) | docs/s | tokens/s | peak RSS MB |", "|---|---|---|---|---|---|---|---|"]
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in results:
        groups.setdefault((r["corpus"], r["tool"]), []).append(r)
    best = {}
    for (corpus, tool), rs in groups.items():
        secs = [r.get("encode_s", r["wall_s"]) for r in rs]
        b = min(secs)
        best[(corpus, tool)] = rs[0]["tokens"] / b
        note = " (encode only)" if tool.startswith("ceiling") else ""
        lines.append(f"| {corpus} | {rs[0]['mb']:.0f} | {tool}{note} | {len(rs)} | {', '.join(f'{s:.2f}' for s in secs)} "
                     f"| {rs[0]['docs'] / b:,.0f} | {rs[0]['tokens'] / b:,.0f} | {max(r['peak_rss_mb'] for r in rs):,.0f} |")
    lines.append("")
    for corpus in sorted({c for c, _ in groups}):
        for other in ("megatron", "fast", "ceiling_hf", "ceiling_giga"):
            if (corpus, other) in best and (corpus, "ours") in best:
                lines.append(f"- {corpus}: ours / {other} tokens/s (best run each) = "
                             f"{best[(corpus, 'ours')] / best[(corpus, other)]:.2f}x")
    lines += [""] + [f"- check: {k}: {v}" for k, v in checks.items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
