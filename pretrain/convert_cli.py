"""`carebot convert`: HuggingFace LLaMA <-> megatron-core checkpoints, any TP/PP, verified by logits.

  hf-to-megatron  HF dir (safetensors + config.json + tokenizer) -> dist checkpoint `OUT/iter_0000000` + `latest`,
                  the layout `pretrain.checkpoint` writes, so `checkpoint.init_from=OUT` starts a run from it.
  megatron-to-hf  any TP/PP checkpoint (converted or trained) -> LlamaForCausalLM dir: sharded safetensors +
                  index, config.json, generation_config.json, tokenizer files with the chat template.
  verify          loads both sides at one or more TP x PP layouts and compares logits, loss and greedy
                  generation on real zh + en text."""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from carebot.cli import run, script
from pretrain.convert import hf_to_megatron, megatron_to_hf
from pretrain.convert_verify import check_layouts, verdict, verify


def _pop_rest(args):
    return getattr(args, "overrides", None) or []


def main(argv: list[str] | None = None) -> int:
    """A ConfigError / CheckpointError / missing file is one line `carebot convert: error: ...` and exit 2."""
    return run(_main, argv, "carebot convert")


def _main(argv: list[str] | None) -> int:
    ap = argparse.ArgumentParser(prog="carebot convert", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("hf-to-megatron", help="HF LLaMA dir -> megatron-core dist checkpoint")
    a.add_argument("--hf", required=True, type=Path, help="HF model dir (safetensors, config.json, tokenizer)")
    a.add_argument("--out", required=True, type=Path, help="checkpoint root to write (iter_0000000 + latest)")
    a.add_argument("--tensor", type=int, default=1, help="target TP (sets the vocabulary padding; checked)")
    a.add_argument("--pipeline", type=int, default=1, help="target PP (checked against the layer count)")
    a.add_argument("--dtype", choices=["auto", "fp32", "bf16"], default="auto", help="auto: the HF tensors' dtype")
    a.add_argument("--tokenizer", type=Path, default=None, help="tokenizer dir (default: the HF dir)")
    b = sub.add_parser("megatron-to-hf", help="megatron-core checkpoint (any TP/PP) -> HF LlamaForCausalLM dir")
    b.add_argument("--megatron", required=True, help="checkpoint root (with `latest`) or an iter_* dir")
    b.add_argument("--out", required=True, type=Path)
    b.add_argument("--dtype", choices=["auto", "fp32", "bf16", "fp16"], default="auto")
    b.add_argument("--config", default=None, help="recipe giving the model shape (default: checkpoint metadata, "
                                                  "else the run's config.yaml)")
    b.add_argument("--tokenizer", default=None, help="tokenizer dir (default: from metadata / run config)")
    b.add_argument("--max-shard-size", default="5GB")
    b.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. model.num_layers=2")
    v = sub.add_parser("verify", help="compare logits / loss / greedy generation of both sides")
    v.add_argument("--hf", required=True, type=Path)
    v.add_argument("--megatron", required=True)
    v.add_argument("--layouts", default="1x1", help="TPxPP list, e.g. 1x1,2x1,1x2 (world size must be a multiple)")
    v.add_argument("--texts", type=Path, default=None, help="JSONL with a `text` field (default: real zh+en text)")
    v.add_argument("--num-texts", type=int, default=4)
    v.add_argument("--max-tokens", type=int, default=64)
    v.add_argument("--generate", type=int, default=20, help="greedy tokens to compare (0: skip)")
    v.add_argument("--rtol", type=float, default=1e-5, help="tolerance relative to the largest |logit| (any layout)")
    v.add_argument("--atol", type=float, default=None, help="an absolute tolerance instead")
    v.add_argument("--summary", type=Path, default=None, help="write the JSON summary here")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "hf-to-megatron":
            res = hf_to_megatron(args.hf, args.out, args.tensor, args.pipeline, args.dtype, args.tokenizer)
        elif args.cmd == "megatron-to-hf":
            res = megatron_to_hf(args.megatron, args.out, args.dtype, args.config, _pop_rest(args), args.tokenizer,
                                 args.max_shard_size)
        else:
            need = math.lcm(*(tp * pp for tp, pp in check_layouts(args)[2]))
            if need > 1 and "WORLD_SIZE" not in os.environ:  # launch the ranks ourselves: one verdict, no torchrun trace
                return _verify_launched(argv, need, args)
            res = verify(args)
            if res is not None:
                print(verdict(res), flush=True)
                return 0 if res["ok"] else 1
            return 0
        if res is not None:
            print(json.dumps(res, indent=1, ensure_ascii=False), flush=True)
        return 0
    finally:
        if "pretrain.distributed" in sys.modules:  # only a command that started process groups
            sys.modules["pretrain.distributed"].teardown()


def _verify_launched(argv: list[str] | None, nproc: int, args) -> int:
    """`verify` over `nproc` ranks started by torch's launcher in a child process; the ranks' log goes to a
    file and this process prints the verdict (exit 1 on FAIL), or the ranks' first error line."""
    import socket
    import subprocess
    import tempfile

    from carebot.errors import CareBotError

    work = Path(tempfile.mkdtemp(prefix="carebot-verify-"))
    summary = Path(args.summary) if args.summary else work / "summary.json"
    rest = list(sys.argv[1:] if argv is None else argv)
    rest = [a for i, a in enumerate(rest) if a != "--summary" and (i == 0 or rest[i - 1] != "--summary")]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-port", str(port),
           "-m", "pretrain.convert_cli", *rest, "--summary", str(summary)]
    log = work / "ranks.log"
    with open(log, "w") as f:
        p = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if summary.is_file():
        res = json.loads(summary.read_text())
        print(verdict(res), flush=True)
        return 0 if res["ok"] else 1
    lines = log.read_text(errors="replace").splitlines()
    why = next((l.split("error:", 1)[1] for l in lines if "error:" in l),
               next((l for l in reversed(lines) if l.strip()), "no output"))
    raise CareBotError(f"{why.strip()[:300]} (verify ranks exited {p.returncode}; log {log})")


if __name__ == "__main__":
    script(main, "carebot convert")
