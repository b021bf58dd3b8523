"""`carebot data datarater`: train / apply DataRater, the 0-5 quality regressor (encoder + regression head).

Paper: bge-m3 regressor on two-round GPT-4 scores (inconsistent items dropped), bs 64, lr 1e-5, 10
epochs, model selected by lowest MSE. Reported here: MSE (paper's metric), Spearman and F1 at threshold 3
(BAAI's release: score >= 3 is "relatively high quality"; FineWeb-Edu reports F1 at 3 too).
"""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from data_tools import encoder as E
from data_tools.docs import InputError, doc_text, read_jsonl, write_json, write_jsonl
from data_tools.domain import split


def metrics(pred: np.ndarray, y: np.ndarray, threshold: float = 3.0) -> dict[str, float]:
    p, t = pred >= threshold, y >= threshold
    tp, fp, fn = int((p & t).sum()), int((p & ~t).sum()), int((~p & t).sum())
    f1 = 2 * tp / max(1, 2 * tp + fp + fn)
    rho = spearmanr(pred, y).statistic if len(set(y.tolist())) > 1 else float("nan")
    return {"mse": float(((pred - y) ** 2).mean()), "spearman": float(rho), "f1_at_3": f1,
            "baseline_mse_mean": float(((y - y.mean()) ** 2).mean())}


def train(texts: list[str], scores: list[float], out: Path, enc: E.EncoderConfig, head_cfg: E.HeadConfig, progress: bool = False) -> dict[str, Any]:
    y = np.asarray(scores, dtype=np.float32)
    if y.min() < 0 or y.max() > 5:
        raise InputError("quality scores must be in [0, 5]")
    tr, dv, te = split(len(texts), head_cfg.seed)
    if head_cfg.finetune:
        tok, model, head = E.finetune([texts[i] for i in tr], y[tr], 1, enc, head_cfg, progress)
        X = E.embed(texts, E.resolve(enc), progress, tok_model=(tok, model))
        E.save_model(out, head, enc, {"task": "datarater"}, model, tok)
    else:
        X = E.embed_cached(texts, enc, progress)
        head = E.train_head(X[tr], y[tr], 1, head_cfg, dev=(X[dv], y[dv]) if len(dv) else None)
        E.save_model(out, head, enc, {"task": "datarater"})
    pred = np.clip(E.predict(head, X[te])[:, 0], 0, 5)
    rep = {"n_train": len(tr), "n_dev": len(dv), "n_test": len(te), **metrics(pred, y[te]), "finetune": head_cfg.finetune}
    write_json(out / "eval.json", rep)
    (out / "report.md").write_text(
        "# DataRater\n\n| metric | held-out |\n|---|---|\n" + "".join(f"| {k} | {v:.4f} |\n" for k, v in rep.items() if isinstance(v, float)),
        encoding="utf-8")
    return rep


def apply(model_dir: Path, recs: list[dict], batch_size: int = 64, progress: bool = True) -> list[dict]:
    head, enc, _ = E.load_model(model_dir)
    # cached per text: the domain classifier and DataRater score the same corpus with one encoding
    X = E.embed_cached([doc_text(r) for r in recs], E.EncoderConfig(**{**asdict(enc), "batch_size": batch_size}), progress)
    q = np.clip(E.predict(head, X)[:, 0], 0, 5)
    return [{**r, "quality": round(float(s), 3)} for r, s in zip(recs, q)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="carebot data datarater", description="train / apply the DataRater quality regressor")
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--train", nargs="+", required=True, help="jsonl with text + quality (label's train.jsonl)")
    t.add_argument("--score-field", default="quality")
    t.add_argument("--out", required=True)
    t.add_argument("--encoder", default="")
    t.add_argument("--max-length", type=int, default=256)
    t.add_argument("--finetune", action="store_true", help="full fine-tuning (paper: lr 1e-5, bs 64, 10 epochs)")
    t.add_argument("--seed", type=int, default=0)
    a_ = sub.add_parser("apply")
    a_.add_argument("--model", required=True)
    a_.add_argument("--input", nargs="+", required=True)
    a_.add_argument("--out-dir", required=True)
    a = ap.parse_args(argv)
    if a.cmd == "train":
        texts, ys = [], []
        for p in a.train:
            for n, r in enumerate(read_jsonl(p), 1):
                if a.score_field not in r:
                    raise InputError(f"{p}:{n}: no '{a.score_field}' field")
                texts.append(doc_text(r))
                ys.append(float(r[a.score_field]))
        rep = train(texts, ys, Path(a.out), E.EncoderConfig(path=a.encoder, max_length=a.max_length),
                    E.HeadConfig(finetune=a.finetune, seed=a.seed), progress=True)
        print(json.dumps(rep))
        return 0
    for p in a.input:
        dst = Path(a.out_dir) / Path(p).name
        if not dst.exists():
            write_jsonl(dst, apply(Path(a.model), list(read_jsonl(p))))
    return 0
