"""`carebot data datarater`: train / apply DataRater, the 0-5 quality regressor (encoder + regression head).

Paper: bge-m3 regressor on two-round GPT-4 scores (inconsistent items dropped), bs 64, lr 1e-5, 10
epochs, model selected by lowest MSE. Reported here: MSE (paper's metric), Spearman and F1 at threshold 3
(BAAI's release: score >= 3 is "relatively high quality"; FineWeb-Edu reports F1 at 3 too).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from data_tools.curate import encoder as E
from carebot.errors import InputError
from carebot.io import write_json


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
    head, X, (tr, dv, te) = E.fit(texts, y, 1, out, enc, head_cfg, {"task": "datarater"}, progress)
    pred = np.clip(E.predict(head, X[te])[:, 0], 0, 5)
    rep = {"n_train": len(tr), "n_dev": len(dv), "n_test": len(te), **metrics(pred, y[te]), "finetune": head_cfg.finetune}
    write_json(out / "eval.json", rep)
    (out / "report.md").write_text(
        "# DataRater\n\n| metric | held-out |\n|---|---|\n" + "".join(f"| {k} | {v:.4f} |\n" for k, v in rep.items() if isinstance(v, float)),
        encoding="utf-8")
    return rep


def scores(head, X) -> list[dict]:
    """`quality` (0-5, 3 decimals) of each embedding row."""
    return [{"quality": round(float(s), 3)} for s in np.clip(E.predict(head, X)[:, 0], 0, 5)]


def apply(model_dir: Path, recs: list[dict], batch_size: int = 64, progress: bool = True) -> list[dict]:
    head, X, _ = E.embed_for(model_dir, recs, batch_size, progress)
    return [{**r, **sc} for r, sc in zip(recs, scores(head, X))]


def main(argv: list[str] | None = None) -> int:
    return E.head_main(argv, "carebot data datarater", "the DataRater quality regressor", "score-field", "quality",
                       float, train, apply)


if __name__ == "__main__":
    from carebot.cli import script

    script(main, "carebot data datarater")
