"""`carebot bench`: training throughput of a model / parallel layout, measured with the real Trainer.

  carebot bench --config tiny_stable_cpt.yaml --steps 5 --out runs/bench/tiny           # CPU, the tiny twin
  torchrun --nproc-per-node 8 -m carebot.cli bench --config stable_cpt.yaml \\
      model.num_layers=4 parallel.pipeline=1 --out runs/bench/8b-4layers                 # GPU, 8B-shaped layers

The recipe's model and layout are built by `pretrain.trainer.Trainer(...).setup()` and fed synthetic tokens
(uniform over the vocabulary: throughput does not depend on the text); `train_step()` is timed after the
warm-up steps. Reports tokens/s, tokens/s/GPU, TFLOP/s/GPU from `pretrain.model.flops_per_token` (matmuls
only, 3x forward, as Megatron counts), MFU against the device's dense bf16 peak, and peak memory (CUDA
allocator on GPU, RSS on CPU). `--count-flops` (default on CPU) also counts one step's matmul FLOPs with
torch's FlopCounterMode, an independent check of the formula. JSON + Markdown under --out."""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from carebot.io import write_json
from carebot.errors import ConfigError
from carebot.run_config import load_config
from carebot.cli import script
from carebot.hardware import device_peak
from pretrain.trainer import Stage

# What FlopCounterMode calls a matmul: every dense product of the model (linear layers, attention, logits).
MATMUL_OPS = ("mm", "addmm", "bmm", "baddbmm", "matmul", "_scaled_dot_product_flash_attention",
              "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention",
              "_flash_attention_forward", "_efficient_attention_forward", "_flash_attention_backward",
              "_efficient_attention_backward", "_scaled_dot_product_flash_attention_backward",
              "_scaled_dot_product_efficient_attention_backward", "_scaled_dot_product_cudnn_attention_backward")


class SyntheticTokens:
    """Uniform random token windows of `seq_length` (+ shifted labels), reproducible per index."""

    def __init__(self, vocab: int, seq_length: int, n: int, seed: int = 0):
        self.vocab, self.seq, self.n, self.seed = vocab, seq_length, n, seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        ids = torch.randint(0, self.vocab, (self.seq + 1,), generator=g)
        return {"tokens": ids[:-1], "labels": ids[1:], "loss_mask": torch.ones(self.seq),
                "position_ids": torch.arange(self.seq)}


def _synthetic(cfg, tokenizer, num_samples):
    return SyntheticTokens(tokenizer.vocab_size, cfg.data.seq_length, max(num_samples[0], 1), cfg.train.seed), None


BENCH = Stage(name="bench", build_datasets=_synthetic)


def count_step_flops(trainer) -> dict[str, float]:
    """Matmul FLOPs of one real training step (forward + backward of every micro-batch), by aten op."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        trainer.train_step()
    by_op = {str(op).split(".")[-1] if "." in str(op) else str(op): float(n)
             for op, n in fc.get_flop_counts().get("Global", {}).items()}
    return {"total": float(fc.get_total_flops()), "by_op": by_op,
            "matmul": sum(v for k, v in by_op.items() if k in MATMUL_OPS)}


def run_bench(recipe: list[str], overrides: list[str], steps: int, warmup: int, count_flops: bool | None,
              peak_tflops: float | None) -> dict:
    import torch.distributed as dist

    from carebot.tokenizer import build_llama3_tokenizer
    from carebot.paths import cache_dir
    from pretrain.trainer import Trainer

    scratch = tempfile.mkdtemp(prefix="carebot-bench-")
    cfg = load_config(recipe, overrides)
    if not cfg.data.tokenizer or not Path(cfg.data.tokenizer).expanduser().exists():
        cfg.data.tokenizer = str(build_llama3_tokenizer(cache_dir() / "llama3-tokenizer"))  # offline, real vocab
    cfg.data.tokenizer = str(Path(cfg.data.tokenizer).expanduser())
    # a fresh model, no checkpoints, no evaluation: only the training step is measured
    cfg.output_dir, cfg.checkpoint.load, cfg.checkpoint.init_from = scratch, None, None
    cfg.train.eval_interval, cfg.train.tensorboard, cfg.train.epochs = 0, False, None
    extra = 1 if count_flops or (count_flops is None and not torch.cuda.is_available()) else 0
    cfg.train.train_steps = warmup + steps + extra
    trainer = Trainer(cfg, BENCH)
    try:
        trainer.setup()
        for m in trainer.model:
            m.train()
        cuda = torch.cuda.is_available()
        times, losses = [], []
        for i in range(warmup + steps):
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            logs = trainer.train_step()
            if cuda:
                torch.cuda.synchronize()
            if i >= warmup:
                times.append(time.perf_counter() - t0)
                losses.append(logs["loss"])
        counted = count_step_flops(trainer) if extra else None
        world = dist.get_world_size()
        t, p = cfg.train, cfg.parallel
        tokens_per_step = t.global_batch_size * cfg.data.seq_length * BENCH.rows_per_sample
        step_s = statistics.mean(times)
        tps = tokens_per_step / step_s
        tflops = trainer.flops_per_token * tps / world / 1e12
        name = torch.cuda.get_device_name() if cuda else None
        matched, peak = device_peak(name)
        peak = peak_tflops or t.peak_tflops or peak
        mem = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        mem_t = torch.tensor([float(mem)], device="cuda" if cuda else "cpu")
        dist.all_reduce(mem_t, op=dist.ReduceOp.MAX)
        out = {
            "rank": dist.get_rank(), "recipe": recipe, "overrides": overrides, "device": name or "cpu", "peak_matched": matched,
            "world_size": world, "tensor": p.tensor, "pipeline": p.pipeline, "data_parallel": trainer.dp,
            "precision": "bf16" if trainer.bf16 else "fp32",
            "model": {"num_layers": cfg.model.num_layers, "hidden_size": cfg.model.hidden_size,
                      "ffn_hidden_size": cfg.model.ffn_hidden_size, "heads": cfg.model.num_attention_heads,
                      "query_groups": cfg.model.num_query_groups, "vocab_size": trainer.vocab_size,
                      "params": sum(x.numel() for x in trainer.unwrapped.parameters())},
            "seq_length": cfg.data.seq_length, "global_batch_size": t.global_batch_size,
            "micro_batch_size": t.micro_batch_size, "warmup_steps": warmup, "timed_steps": steps,
            "step_time_s": step_s, "step_time_s_all": times,
            "step_time_s_stdev": statistics.stdev(times) if len(times) > 1 else 0.0,
            "tokens_per_step": tokens_per_step, "tokens_per_s": tps, "tokens_per_s_per_gpu": tps / world,
            "flops_per_token": trainer.flops_per_token, "tflops_per_gpu": tflops,
            "peak_tflops": peak, "mfu": tflops / peak if peak else None,
            "peak_memory_bytes": int(mem_t.item()),
            "peak_memory_kind": "torch.cuda.max_memory_allocated" if cuda else "process max RSS",
            "losses": losses,
        }
        if counted is not None:
            # the counter sees this rank's share: TP splits the matmuls, PP the layers, DP the batch
            expected = trainer.flops_per_token * tokens_per_step / world
            out["flop_check"] = {"counted_matmul_flops": counted["matmul"], "formula_flops": expected,
                                 "ratio": counted["matmul"] / expected, "counted_by_op": counted["by_op"],
                                 "counted_total_flops": counted["total"]}
            if not set(counted["by_op"]) - {"mm", "addmm", "matmul"}:
                # torch's FlopCounterMode has no formula for the CPU SDPA kernel: the attention is uncounted
                out["flop_check"]["note"] = "attention not counted (no FlopCounterMode formula for this SDPA kernel)"
        return out
    finally:
        trainer.close()


def markdown(r: dict) -> str:
    m = r["model"]
    rows = [("device", f"{r['device']} x {r['world_size']} ({r['precision']})"),
            ("layout", f"TP {r['tensor']} x PP {r['pipeline']} x DP {r['data_parallel']}"),
            ("model", f"{m['num_layers']} layers, hidden {m['hidden_size']}, ffn {m['ffn_hidden_size']}, "
                      f"heads {m['heads']}/{m['query_groups']}, vocab {m['vocab_size']}, {m['params'] / 1e6:.1f}M params"),
            ("batch", f"{r['global_batch_size']} x {r['seq_length']} tokens (micro {r['micro_batch_size']})"),
            ("steps", f"{r['timed_steps']} timed after {r['warmup_steps']} warm-up; "
                      f"{r['step_time_s']:.3f} s/step (sd {r['step_time_s_stdev']:.3f})"),
            ("tokens/s", f"{r['tokens_per_s']:,.0f}"), ("tokens/s/GPU", f"{r['tokens_per_s_per_gpu']:,.0f}"),
            ("FLOPs/token", f"{r['flops_per_token']:.4g} (matmuls, fwd+bwd)"),
            ("TFLOP/s/GPU", f"{r['tflops_per_gpu']:.3f}"),
            ("MFU", f"{r['mfu'] * 100:.1f}% of {r['peak_tflops']:g} TFLOP/s" if r["mfu"] else "n/a (no peak for this device)"),
            ("peak memory", f"{r['peak_memory_bytes'] / 2**30:.2f} GiB ({r['peak_memory_kind']})")]
    if "flop_check" in r:
        fc = r["flop_check"]
        rows.append(("FLOP check", f"FlopCounterMode matmuls {fc['counted_matmul_flops']:.6g} vs formula "
                                   f"{fc['formula_flops']:.6g} per rank-step (ratio {fc['ratio']:.4f})"
                                   + (f"; {fc['note']}" if "note" in fc else "")))
    body = "\n".join(f"| {k} | {v} |" for k, v in rows)
    return f"# carebot bench: {', '.join(map(str, r['recipe']))}\n\n| | |\n|---|---|\n{body}\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="carebot bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", nargs="+", required=True, help="recipe YAML(s)")
    ap.add_argument("overrides", nargs="*", help="dotted overrides (model.num_layers=4, parallel.tensor=8, ...)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps")
    ap.add_argument("--warmup", type=int, default=3, help="untimed warm-up steps (allocator, kernels, caches)")
    ap.add_argument("--count-flops", action=argparse.BooleanOptionalAction, default=None,
                    help="count one extra step's matmul FLOPs with FlopCounterMode (default: on CPU only)")
    ap.add_argument("--peak-tflops", type=float, help="device peak for MFU (default: looked up by device name)")
    ap.add_argument("--out", help="write bench.json + bench.md here")
    argv = list(sys.argv[1:] if argv is None else argv)
    # `--config a.yaml k=v`: --config takes several YAMLs; anything with '=' is an override
    a = ap.parse_args(argv)
    over = [c for c in a.config if "=" in c] + a.overrides
    a.config = [c for c in a.config if "=" not in c]
    if a.steps < 1 or a.warmup < 0:
        print("carebot bench: error: --steps must be >= 1 and --warmup >= 0", file=sys.stderr)
        return 2
    try:
        r = run_bench(a.config, over, a.steps, a.warmup, a.count_flops, a.peak_tflops)
    except ConfigError as e:
        print(f"carebot bench: error: {e}", file=sys.stderr)
        return 2
    if r.pop("rank") != 0:  # one report, from rank 0
        return 0
    md = markdown(r)
    print(md, flush=True)
    print(f"tokens/s {r['tokens_per_s']:.1f}; FLOPs/token {r['flops_per_token']:.6g}"
          + (f"; counted/formula {r['flop_check']['ratio']:.6f}" if "flop_check" in r else ""), flush=True)
    if a.out:
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "bench.json", r)
        (out / "bench.md").write_text(md)
    return 0


if __name__ == "__main__":
    script(main, "carebot bench")
