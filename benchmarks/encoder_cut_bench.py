"""Cut-then-tokenize (ours: carebot.text.clip_for_tokens, then the tokenizer) vs tokenizing the whole text with
truncation=True (what FlagEmbedding's `encode_single_device` does for every text, and plain `tokenizer(...,
truncation=True)`), side by side in one run, on one long zh + en document, with the XLM-R/bge-m3 vocabulary.

  python benchmarks/encoder_cut_bench.py [--mb 5 50] [--max-length 512]

Prints seconds and peak-RSS growth of each, and whether both give the same token ids.
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, nargs="+", default=[5, 50])
    ap.add_argument("--max-length", type=int, default=512)
    a = ap.parse_args()
    from transformers import AutoTokenizer

    from carebot.text import clip_for_tokens
    from data_tools.curate import encoder as E

    tok = AutoTokenizer.from_pretrained(E.resolve(E.EncoderConfig(max_length=a.max_length)).path)
    tok(["warm up"], truncation=True, max_length=a.max_length)

    def peak_mb() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    print("| document | cut, then tokenize | whole text, truncation=True | ratio (s) | same ids |\n|---|---|---|---|---|")
    for mb in sorted(a.mb):  # ascending: the peak-RSS growth of each row is over the rows before it
        text = ("患者男性，五十岁，反复胸痛三年。 The patient reports chest pain on exertion. " * 900_000)[: int(mb * 2**20)]
        b0 = peak_mb()
        t = time.perf_counter()
        ours = tok([clip_for_tokens(text, a.max_length)], truncation=True, max_length=a.max_length)
        t_ours, g_ours = time.perf_counter() - t, peak_mb() - b0
        t = time.perf_counter()
        whole = tok([text], truncation=True, max_length=a.max_length)
        t_whole, g_whole = time.perf_counter() - t, peak_mb() - b0
        print(f"| {mb:g} MB | {t_ours:.3f} s, +{g_ours:.0f} MB | {t_whole:.2f} s, +{g_whole:.0f} MB | "
              f"{t_whole / t_ours:.0f}x | {ours['input_ids'] == whole['input_ids']} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
