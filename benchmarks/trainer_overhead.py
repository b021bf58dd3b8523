"""Step time of `carebot pretrain`'s loop vs a bare PyTorch loop, same tiny model and data, one process.

The bare loop: the same megatron-core GPTModel (fresh copy, same init), per micro-batch forward + backward,
`torch.optim.AdamW`, zero_grad. Ours: `Trainer.train_step` (megatron DDP grad buffers, megatron optimizer
with grad clipping, LR scheduler, loss reduction/broadcast, micro-batch schedule). Blocks alternate
A/B/A/B... and the median step time of each is compared.

    python benchmarks/trainer_overhead.py [--steps 20 --rounds 4 --seq 128 --hidden 64]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build_data(tmp: Path) -> tuple[str, str]:
    from carebot.paths import cache_dir, data_dir
    from data_tools.tokens.tokenize import TokenizeConfig, out_prefix, run
    from carebot.tokenizer import train_small_bpe
    from tests.helpers import corpus_texts

    tok = train_small_bpe(corpus_texts(data_dir()), cache_dir() / "bpe4k-v1", vocab_size=4096)
    src = tmp / "corpus.jsonl"
    src.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in corpus_texts(data_dir())))
    cfg = TokenizeConfig(inputs=[str(src)], output_prefix=str(tmp / "corpus"), tokenizer=str(tok))
    run(cfg)
    return str(tok), out_prefix(cfg, "text")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--micro", type=int, default=4)
    ap.add_argument("--global-batch", type=int, default=8)
    ap.add_argument("--out", default="docs/bench/trainer_overhead.json")
    a = ap.parse_args()

    import torch

    from carebot.run_config import load_config
    from pretrain.model import build_model
    from pretrain.train import CPT
    from pretrain.trainer import Trainer

    tmp = Path(tempfile.mkdtemp())
    tok, prefix = build_data(tmp)
    cfg = load_config("tiny_stable_cpt.yaml", [
        f"output_dir={tmp / 'run'}", f"data.tokenizer={tok}", f"data.data_path=[{prefix}]",
        f"data.seq_length={a.seq}", f"model.hidden_size={a.hidden}", f"model.num_layers={a.layers}",
        f"model.ffn_hidden_size={int(a.hidden * 2.75)}", f"train.micro_batch_size={a.micro}",
        f"train.global_batch_size={a.global_batch}", f"train.train_steps={a.steps * a.rounds * 2 + 10}",
        "train.eval_interval=0", "train.tensorboard=false", "optim.clip_grad=1.0"])
    tr = Trainer(cfg, CPT).setup()

    # bare loop: a fresh model of the same shape and init, torch AdamW, plain per-micro-batch backward
    torch.manual_seed(cfg.train.seed)
    bare = build_model(cfg.model, cfg.parallel, tr.vocab_size, cfg.data.seq_length)
    opt = torch.optim.AdamW(bare.parameters(), lr=cfg.optim.lr, betas=(0.9, 0.95), weight_decay=0.1)
    consumed = [0]

    def bare_step():
        for batch in tr._batches(tr.train_ds, consumed[0]):
            per_tok = bare(batch["tokens"], batch["position_ids"], None, labels=batch["labels"])
            loss = (per_tok * batch["loss_mask"]).sum() / batch["loss_mask"].sum() / tr.num_micro
            loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        consumed[0] += cfg.train.global_batch_size

    def timed(fn, n):
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
        return out

    for m in tr.model:
        m.train()
    timed(tr.train_step, 3)  # warm-up both
    timed(bare_step, 3)
    ours, base = [], []
    for _ in range(a.rounds):
        ours += timed(tr.train_step, a.steps)
        base += timed(bare_step, a.steps)
    tr.close()
    mo, mb = statistics.median(ours), statistics.median(base)
    tokens = cfg.train.global_batch_size * cfg.data.seq_length
    res = {"carebot_step_s": mo, "bare_step_s": mb, "ratio": mo / mb, "tokens_per_step": tokens,
           "carebot_tokens_per_s": tokens / mo, "bare_tokens_per_s": tokens / mb, "steps_each": len(ours),
           "shape": {"layers": a.layers, "hidden": a.hidden, "seq": a.seq, "vocab": tr.vocab_size,
                     "micro": a.micro, "global": a.global_batch}, "torch_threads": torch.get_num_threads()}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
