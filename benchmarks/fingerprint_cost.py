"""What content fingerprints cost `carebot data tokenize` on the tokenize benchmark's x7 corpus (101 MB), not a
test. Measured side by side in one run, `--runs` times:
  run          the whole command (imports included), fresh prefix
  input hash   sha256 of the input, as the tokenizing pass computes it (hashlib on the same bytes; in the pass it
               overlaps nothing, so this is its share of the run)
  output hash  sha256 of the .bin and .idx the manifest vouches for (read back once at the end of the run)
  up to date   the rerun that answers "up to date" (stat keys unchanged: nothing is read)
  after touch  the rerun after `touch` of the input (stat key changed: the input is hashed again, then "up to date")

    python benchmarks/fingerprint_cost.py [--data ../shared/data] [--runs 2] [--workdir /tmp/tokbench]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def timed(cmd: list[str]) -> float:
    t = time.perf_counter()
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if p.returncode:
        raise RuntimeError(p.stderr[-3000:])
    return time.perf_counter() - t


def main() -> int:
    from benchmarks.tokenize_bench import build_corpora
    from carebot.commit import file_sha256
    from carebot.paths import data_dir
    from carebot.tokenizer import build_llama3_tokenizer
    from carebot.paths import cache_dir

    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=data_dir())
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/tokbench"))
    a = ap.parse_args()
    corpus = build_corpora(a.data, a.workdir, [100])
    src = next(p for k, p in corpus.items() if k != "x1")
    tok = build_llama3_tokenizer(cache_dir() / "llama3-tokenizer")
    rows = []
    for r in range(a.runs):
        prefix = a.workdir / f"fp_run{r}"
        for f in a.workdir.glob(f"fp_run{r}_*"):
            f.unlink()
        cmd = [sys.executable, "-m", "carebot.cli", "data", "tokenize", "--input", str(src), "--output-prefix",
               str(prefix), "--tokenizer", str(tok)]
        run = timed(cmd)
        t = time.perf_counter(); file_sha256(src); in_hash = time.perf_counter() - t
        t = time.perf_counter()
        for ext in (".bin", ".idx"):
            file_sha256(f"{prefix}_text_document{ext}")
        out_hash = time.perf_counter() - t
        up = timed(cmd)
        os.utime(src)
        touched = timed(cmd)
        rows.append({"run_s": run, "input_hash_s": in_hash, "output_hash_s": out_hash, "up_to_date_s": up,
                     "after_touch_s": touched, "share": (in_hash + out_hash) / run})
        print(json.dumps({k: round(v, 3) for k, v in rows[-1].items()}))
    mb = src.stat().st_size / 2**20
    print(f"\n{src.name}: {mb:.0f} MB; fingerprint share of the run (input + output sha256): "
          + ", ".join(f"{x['share'] * 100:.1f}%" for x in rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
