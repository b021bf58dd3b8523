"""Throughput of `carebot data rules` vs datatrove's comparable filters, same real input, 2 processes.

Input: every text document of the full data sets (general + dialogue + benchmarks, via doc_text) repeated
--repeat times into one JSONL. Ours: rules.run(workers=2) (length, special chars, repetition, bad words,
PII with checksums). datatrove: LocalPipelineExecutor(tasks=2, workers=2) over JsonlReader ->
GopherRepetitionFilter -> GopherQualityFilter -> PIIFormatter -> JsonlWriter (English-centric: no zh
units, no ID/card checksums; its C4BadWordsFilter downloads its word list at run time, impossible offline,
so it is left out and datatrove does strictly less work than ours). Both write kept docs to disk.
Run: python benchmarks/rules_bench.py [--repeat 3]
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from carebot.io import read_jsonl
from carebot.text import doc_text, lang_of
from carebot.paths import data_dir
from data_tools.curate.rules import RulesConfig, run


def build_input(path: Path, repeat: int) -> int:
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(repeat):
            for p in sorted(data_dir().glob("*/*.jsonl")):
                for r in read_jsonl(p):
                    t = doc_text(r)
                    f.write(json.dumps({"id": f"{n}", "text": t, "lang": lang_of(t)}, ensure_ascii=False) + "\n")
                    n += 1
    return n


def bench_datatrove(inp: Path, out: Path, workers: int) -> float:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter
    from datatrove.pipeline.formatters import PIIFormatter
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    # split the input so both tasks have work (datatrove parallelises over files)
    parts = out / "in"
    parts.mkdir(parents=True)
    lines = inp.read_text(encoding="utf-8").splitlines(keepends=True)
    half = len(lines) // 2
    (parts / "a.jsonl").write_text("".join(lines[:half]), encoding="utf-8")
    (parts / "b.jsonl").write_text("".join(lines[half:]), encoding="utf-8")
    t = time.time()
    LocalPipelineExecutor(
        pipeline=[JsonlReader(str(parts)), GopherRepetitionFilter(), GopherQualityFilter(), PIIFormatter(), JsonlWriter(str(out / "kept"))],
        tasks=2, workers=workers, logging_dir=str(out / "logs"),
    ).run()
    return time.time() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    inp = tmp / "corpus.jsonl"
    n = build_input(inp, a.repeat)
    mb = inp.stat().st_size / 1e6
    t = time.time()
    s = run([inp], tmp / "ours", RulesConfig(), workers=a.workers, progress=False)
    ours = time.time() - t
    print(f"input: {n} docs, {mb:.1f} MB")
    print(f"carebot rules : {ours:6.1f} s  {n / ours:8.0f} docs/s  kept {s['totals']['kept']}")
    try:
        dt = bench_datatrove(inp, tmp / "dt", a.workers)
        print(f"datatrove     : {dt:6.1f} s  {n / dt:8.0f} docs/s")
        print(f"ratio ours/datatrove docs/s: {dt / ours:.2f}")
    except ImportError as e:
        print(f"datatrove not installed ({e})")
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
