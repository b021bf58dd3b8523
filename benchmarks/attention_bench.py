"""CPU step time of the two TE-free core attentions, side by side in one run: megatron-core's local spec
(baddbmm + softmax, scores materialised) vs `sdpa` (torch's scaled_dot_product_attention), both through the
real Trainer (`carebot bench`), alternating local, sdpa, local, sdpa so a drifting machine hits both alike.

  python benchmarks/attention_bench.py [--out runs/attention_bench]

Two shapes: the tiny CPT twin (2 layers, hidden 64, LLaMA-3 vocab, seq 128: the logits are the model) and an
attention-heavy one (4 layers, hidden 256, 8 heads / 2 groups, seq 2048, a 4k BPE trained on the samples).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHAPES = {
    "tiny twin, seq 128, LLaMA-3 vocab": (None, ["data.seq_length=128", "train.micro_batch_size=2",
                                                "train.global_batch_size=4"]),
    "4 x 256, seq 2048, 4k vocab": ("bpe4k", ["model.num_layers=4", "model.hidden_size=256", "model.ffn_hidden_size=704",
                                              "model.num_attention_heads=8", "model.num_query_groups=2",
                                              "data.seq_length=2048", "train.micro_batch_size=1",
                                              "train.global_batch_size=2"]),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "attention_bench")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    sys.path.insert(0, str(REPO))
    from carebot.paths import cache_dir, data_dir
    from carebot.tokenizer import build_llama3_tokenizer, train_small_bpe
    from tests.helpers import corpus_texts

    toks = {None: build_llama3_tokenizer(cache_dir() / "llama3-tokenizer"),
            "bpe4k": train_small_bpe(corpus_texts(data_dir()), a.out / "bpe4k", vocab_size=4096)}
    rows = []
    for shape, (tok, over) in SHAPES.items():
        res: dict = {"local": [], "sdpa": []}
        for i in range(a.repeats):
            for spec in ("local", "sdpa"):
                d = a.out / f"{len(rows)}-{spec}-{i}"
                subprocess.run([sys.executable, "-m", "carebot.cli", "bench", "--config", "tiny_stable_cpt.yaml", *over,
                                f"data.tokenizer={toks[tok]}", f"model.attention_backend={spec}", "--steps", str(a.steps),
                                "--warmup", "3", "--no-count-flops", "--out", str(d)], cwd=REPO, check=True,
                               capture_output=True)
                res[spec].append(json.loads((d / "bench.json").read_text()))
        med = {s: statistics.median(t for r in v for t in r["step_time_s_all"]) for s, v in res.items()}
        rss = {s: max(r["peak_memory_bytes"] for r in v) / 2**30 for s, v in res.items()}
        rows.append((shape, med, rss))
    lines = ["| shape | local s/step | sdpa s/step | local / sdpa | local RSS GiB | sdpa RSS GiB |", "|---|---|---|---|---|---|"]
    lines += [f"| {s} | {m['local']:.3f} | {m['sdpa']:.3f} | {m['local'] / m['sdpa']:.2f}x | {r['local']:.2f} | {r['sdpa']:.2f} |"
              for s, m, r in rows]
    print("\n".join(lines))
    (a.out / "attention_bench.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
