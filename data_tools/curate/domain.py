"""`carebot data domain`: train / apply the domain classifier (encoder + classification head).

Paper: bge-m3 fine-tuned on GPT-4 domain labels (lr 1e-5, bs 64, 10 epochs; 86% val acc). `--finetune`
runs that recipe; the default trains a head on frozen, cached embeddings (the CPU path, see
docs/curation.md). Eval report: accuracy + confusion matrix on a held-out split.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from data_tools.curate import encoder as E
from carebot.errors import InputError
from carebot.io import write_json


def train(texts: list[str], labels: list[str], out: Path, enc: E.EncoderConfig, head_cfg: E.HeadConfig, progress: bool = False) -> dict[str, Any]:
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise InputError(f"need at least 2 domain classes, got {classes}")
    y = np.array([classes.index(l) for l in labels])
    head, X, (tr, dv, te) = E.fit(texts, y, len(classes), out, enc, head_cfg, {"task": "domain", "classes": classes}, progress)
    pred = E.predict(head, X[te]).argmax(1)
    cm = np.zeros((len(classes), len(classes)), dtype=int)
    for t, p in zip(y[te], pred):
        cm[t, p] += 1
    report = {"n_train": len(tr), "n_dev": len(dv), "n_test": len(te), "accuracy": float((pred == y[te]).mean()),
              "balanced_accuracy": E.balanced_accuracy(pred, y[te], len(classes)), "classes": classes,
              "confusion": cm.tolist(), "finetune": head_cfg.finetune, "encoder": E.resolve(enc).path}
    write_json(out / "eval.json", report)
    rows = "".join(f"| {c} | " + " | ".join(map(str, cm[i])) + " |\n" for i, c in enumerate(classes))
    (out / "report.md").write_text(f"# Domain classifier\n\nheld-out accuracy {report['accuracy']:.4f} (balanced "
                                   f"{report['balanced_accuracy']:.4f}) on {len(te)} docs\n\n"
                                   f"| true \\ pred | {' | '.join(classes)} |\n|---|{'---|' * len(classes)}\n{rows}", encoding="utf-8")
    return report


def labels(head, X, meta: dict) -> list[dict]:
    """`domain` and `domain_prob` (4 decimals) of each embedding row."""
    prob = torch.softmax(torch.from_numpy(E.predict(head, X)), -1).numpy()
    return [{"domain": meta["classes"][int(p.argmax())], "domain_prob": round(float(p.max()), 4)} for p in prob]


def apply(model_dir: Path, recs: list[dict], batch_size: int = 64, progress: bool = True) -> list[dict]:
    head, X, meta = E.embed_for(model_dir, recs, batch_size, progress)
    return [{**r, **lab} for r, lab in zip(recs, labels(head, X, meta))]


def main(argv: list[str] | None = None) -> int:
    return E.head_main(argv, "carebot data domain", "the domain classifier", "label-field", "domain", str, train, apply)


if __name__ == "__main__":
    from carebot.cli import script

    script(main, "carebot data domain")
