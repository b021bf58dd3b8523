"""DataRater trained on scores from the label step (fake OpenAI server, rule-based rater), held-out metrics."""
from __future__ import annotations

import json

import numpy as np

from data_tools.curate import encoder as E
from data_tools.curate.datarater import apply, metrics, train
from carebot.io import write_jsonl
from tests.fixtures.fake_openai import FakeOpenAI
from data_tools.curate.label import main as label_main
from tests.data_tools.curate.test_domain import ENC, corpus


def test_metrics_known_values():
    m = metrics(np.array([0.0, 2.0, 3.5, 4.0]), np.array([1.0, 2.0, 3.0, 5.0]))
    assert m["mse"] == (1 + 0 + 0.25 + 1) / 4 and m["f1_at_3"] == 1.0 and m["spearman"] == 1.0


def test_datarater_from_label_scores(tmp_path, data_root):
    texts, _ = corpus(data_root)  # same texts as the domain test: embeddings come from the cache
    write_jsonl(tmp_path / "docs.jsonl", ({"id": f"d{i}", "text": t} for i, t in enumerate(texts)))
    with FakeOpenAI() as srv:
        assert label_main(["--input", str(tmp_path / "docs.jsonl"), "--out", str(tmp_path / "lab"), "--base-url", srv.base_url,
                           "--model", "fake", "--no-progress", "--concurrency", "8"]) == 0
    kept = [json.loads(l) for l in open(tmp_path / "lab" / "train.jsonl", encoding="utf-8")]
    assert 0.6 * len(texts) < len(kept) < len(texts)  # the consistency filter drops some, as in the paper
    rep = train([k["text"] for k in kept], [k["quality"] for k in kept], tmp_path / "dr", ENC, E.HeadConfig(seed=0))
    print("datarater", rep)
    assert rep["mse"] < rep["baseline_mse_mean"]  # better than predicting the mean
    assert rep["spearman"] > 0.3 and 0 <= rep["f1_at_3"] <= 1
    out = apply(tmp_path / "dr", kept[:3], progress=False)
    assert all(0 <= o["quality"] <= 5 for o in out)
