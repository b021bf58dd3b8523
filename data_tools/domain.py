"""`carebot data domain`: train / apply the domain classifier (encoder + classification head).

Paper: bge-m3 fine-tuned on GPT-4 domain labels (lr 1e-5, bs 64, 10 epochs; 86% val acc). `--finetune`
runs that recipe; the default trains a head on frozen, cached embeddings (the CPU path, see
docs/curation.md). Eval report: accuracy + confusion matrix on a held-out split.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data_tools import encoder as E
from data_tools.docs import InputError, doc_text, read_jsonl, write_json, write_jsonl


def split(n: int, seed: int, test_frac: float = 0.2, dev_frac: float = 0.1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    idx = np.random.default_rng(seed).permutation(n)
    nt, nd = int(n * test_frac), int(n * dev_frac)
    return idx[nt + nd :], idx[nt : nt + nd], idx[:nt]


def train(texts: list[str], labels: list[str], out: Path, enc: E.EncoderConfig, head_cfg: E.HeadConfig, progress: bool = False) -> dict[str, Any]:
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise InputError(f"need at least 2 domain classes, got {classes}")
    y = np.array([classes.index(l) for l in labels])
    tr, dv, te = split(len(texts), head_cfg.seed)
    if head_cfg.finetune:
        tok, model, head = E.finetune([texts[i] for i in tr], y[tr], len(classes), enc, head_cfg, progress)
        X = E.embed(texts, E.resolve(E.EncoderConfig(**{**asdict(E.resolve(enc))})), progress, tok_model=(tok, model))
        E.save_model(out, head, enc, {"task": "domain", "classes": classes}, model, tok)
    else:
        X = E.embed_cached(texts, enc, progress)
        head = E.train_head(X[tr], y[tr], len(classes), head_cfg, dev=(X[dv], y[dv]) if len(dv) else None)
        E.save_model(out, head, enc, {"task": "domain", "classes": classes})
    pred = E.predict(head, X[te]).argmax(1)
    cm = np.zeros((len(classes), len(classes)), dtype=int)
    for t, p in zip(y[te], pred):
        cm[t, p] += 1
    report = {"n_train": len(tr), "n_dev": len(dv), "n_test": len(te), "accuracy": float((pred == y[te]).mean()),
              "classes": classes, "confusion": cm.tolist(), "finetune": head_cfg.finetune, "encoder": E.resolve(enc).path}
    write_json(out / "eval.json", report)
    rows = "".join(f"| {c} | " + " | ".join(map(str, cm[i])) + " |\n" for i, c in enumerate(classes))
    (out / "report.md").write_text(f"# Domain classifier\n\nheld-out accuracy {report['accuracy']:.4f} on {len(te)} docs\n\n"
                                   f"| true \\ pred | {' | '.join(classes)} |\n|---|{'---|' * len(classes)}\n{rows}", encoding="utf-8")
    return report


def apply(model_dir: Path, recs: list[dict], batch_size: int = 64, progress: bool = True) -> list[dict]:
    head, enc, meta = E.load_model(model_dir)
    # cached per text: the domain classifier and DataRater score the same corpus with one encoding
    X = E.embed_cached([doc_text(r) for r in recs], E.EncoderConfig(**{**asdict(enc), "batch_size": batch_size}), progress)
    prob = torch.softmax(torch.from_numpy(E.predict(head, X)), -1).numpy()
    return [{**r, "domain": meta["classes"][int(p.argmax())], "domain_prob": round(float(p.max()), 4)} for r, p in zip(recs, prob)]


def _load_labelled(paths: list[str], field: str) -> tuple[list[str], list[str]]:
    texts, labels = [], []
    for p in paths:
        for n, r in enumerate(read_jsonl(p), 1):
            if field not in r:
                raise InputError(f"{p}:{n}: no '{field}' field")
            texts.append(doc_text(r))
            labels.append(str(r[field]))
    return texts, labels


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="carebot data domain", description="train / apply the domain classifier")
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--train", nargs="+", required=True, help="jsonl with text + label field (e.g. label's train.jsonl)")
    t.add_argument("--label-field", default="domain")
    t.add_argument("--out", required=True)
    t.add_argument("--encoder", default="", help="HF encoder dir (bge-m3); default: offline e5-small")
    t.add_argument("--max-length", type=int, default=256)
    t.add_argument("--finetune", action="store_true", help="full fine-tuning (paper: lr 1e-5, bs 64, 10 epochs)")
    t.add_argument("--seed", type=int, default=0)
    a_ = sub.add_parser("apply")
    a_.add_argument("--model", required=True)
    a_.add_argument("--input", nargs="+", required=True)
    a_.add_argument("--out-dir", required=True)
    a = ap.parse_args(argv)
    if a.cmd == "train":
        texts, labels = _load_labelled(a.train, a.label_field)
        rep = train(texts, labels, Path(a.out), E.EncoderConfig(path=a.encoder, max_length=a.max_length),
                    E.HeadConfig(finetune=a.finetune, seed=a.seed), progress=True)
        print(json.dumps(rep))
        return 0
    for p in a.input:  # one output shard per input; finished shards are skipped on rerun
        dst = Path(a.out_dir) / Path(p).name
        if not dst.exists():
            write_jsonl(dst, apply(Path(a.model), list(read_jsonl(p))))
    return 0
